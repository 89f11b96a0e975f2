// Microphone capture for the agent page: the AudioContext's rate (44.1 or 48 kHz, usually)
// down to 16 kHz mono PCM16LE, posted to the main thread in 20 ms chunks (320 samples).
//
// Downsampling is a windowed-sinc low-pass evaluated at each output instant (a fractional
// resampler), so 44.1 kHz works as well as 48 kHz: everything above ~7.2 kHz is filtered out
// before the rate drops, instead of folding back as aliases the way naive decimation would.
// The kernel is tabulated once (TABLE_STEPS points per input sample) and interpolated.

const OUT_RATE = 16000;
const CHUNK = 320; // 20 ms at 16 kHz
const ZERO_CROSSINGS = 8; // kernel half-width, in output samples
const TABLE_STEPS = 128;
const CUTOFF = 0.45; // of the output rate: 7.2 kHz at 16 kHz, below its 8 kHz Nyquist

class MicDownsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const outRate = (options && options.processorOptions && options.processorOptions.outRate) || OUT_RATE;
    this.ratio = sampleRate / outRate; // input samples per output sample (>= 1 here)
    const down = Math.max(this.ratio, 1);
    this.half = Math.ceil(ZERO_CROSSINGS * down); // half-width in input samples
    // Cut-off in cycles per input sample; the kernel's gain sums to 1 at DC.
    const fc = (CUTOFF * outRate) / sampleRate;
    const size = this.half * TABLE_STEPS;
    this.table = new Float32Array(size + 2);
    for (let i = 0; i <= size + 1; i++) {
      const x = i / TABLE_STEPS; // distance in input samples
      const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
      const w = x >= this.half ? 0 : blackman(x / this.half);
      this.table[i] = sinc * w;
    }
    this.buffer = new Float32Array(4096);
    this.length = 0; // valid samples in buffer
    this.pos = 0; // input position (in buffer) of the next output sample
    // Leading history so the first output sample has a full left half: start in "silence".
    this.length = this.half;
    this.pos = this.half;
    this.out = new Int16Array(CHUNK);
    this.outLength = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  kernel(distance) {
    const d = Math.abs(distance) * TABLE_STEPS;
    const i = Math.floor(d);
    if (i >= this.table.length - 1) return 0;
    const frac = d - i;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * frac;
  }

  append(channels, frames) {
    if (this.length + frames > this.buffer.length) {
      const bigger = new Float32Array((this.length + frames) * 2);
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    const count = channels.length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < count; c++) sum += channels[c][i];
      this.buffer[this.length + i] = sum / count; // a mono mix of every input channel
    }
    this.length += frames;
  }

  resample() {
    const half = this.half;
    const buf = this.buffer;
    // Filter gain: at integer ratios the taps sum to ~1; normalise exactly anyway.
    while (this.pos + half < this.length) {
      const centre = this.pos;
      const first = Math.ceil(centre - half);
      const last = Math.floor(centre + half);
      let acc = 0;
      let norm = 0;
      for (let j = first; j <= last; j++) {
        const k = this.kernel(centre - j);
        acc += buf[j] * k;
        norm += k;
      }
      this.emit(norm > 0 ? acc / norm : 0);
      this.pos += this.ratio;
    }
    // Drop the input no later output sample will need (keep a left half-width of history).
    const keep = Math.floor(this.pos) - half;
    if (keep > 0) {
      buf.copyWithin(0, keep, this.length);
      this.length -= keep;
      this.pos -= keep;
    }
  }

  emit(value) {
    const v = value > 1 ? 1 : value < -1 ? -1 : value;
    this.sumSquares += v * v;
    const a = v < 0 ? -v : v;
    if (a > this.peak) this.peak = a;
    this.out[this.outLength++] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    if (this.outLength === CHUNK) {
      const pcm = this.out.buffer;
      this.port.postMessage(
        { pcm, rms: Math.sqrt(this.sumSquares / CHUNK), peak: this.peak },
        [pcm],
      );
      this.out = new Int16Array(CHUNK);
      this.outLength = 0;
      this.sumSquares = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (input && input.length > 0 && input[0].length > 0) {
      this.append(input, input[0].length);
      this.resample();
    }
    return true;
  }
}

function blackman(t) {
  // t in [0, 1): distance from the centre over the half-width.
  const x = Math.PI * (t + 1); // the window's second half, 0..1 mapped onto pi..2pi
  return 0.42 - 0.5 * Math.cos(x) + 0.08 * Math.cos(2 * x);
}

registerProcessor("parley-mic-downsampler", MicDownsampler);
