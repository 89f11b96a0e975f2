from django.apps import AppConfig


class SpeechConfig(AppConfig):
    name = "speech"
    verbose_name = "Speech synthesis"

    def ready(self) -> None:
        from speech.jobs import local_job_ids, speech_jobs_abandon_stale, speech_jobs_heartbeat
        from streams.scheduler import HEARTBEAT_HOOKS, SWEEP_HOOKS

        # Jobs of a process that died mid-synthesis are marked failed by any sweeper.
        SWEEP_HOOKS.append(lambda now: speech_jobs_abandon_stale(now=now))
        HEARTBEAT_HOOKS.append(lambda: speech_jobs_heartbeat(job_ids=local_job_ids()))
