from django.apps import AppConfig


class LongformConfig(AppConfig):
    name = "longform"
    verbose_name = "Long text jobs"

    def ready(self) -> None:
        from longform.runner import sweep_hook
        from streams.scheduler import SWEEP_HOOKS

        # Any sweeper (every web process, run_scheduler) picks up jobs nobody runs: new ones,
        # resumed ones, and those of a process that died (its lease ran out).
        SWEEP_HOOKS.append(sweep_hook)
