// Time the reference inference workloads with ONNX Runtime (CPU EP, float32).
//
//   cd bench/reference && ONNXRUNTIME_NODE_INSTALL=skip npm install
//   node bench/reference/bench_ort.mjs --model bench/reference/models/unet2d_infer.onnx \
//        --workload 2d_infer --threads 2 --warmup 2 --repeats 20
//
// Prints one JSON line: median/min/max ms over the timed runs and the peak RSS of the
// process (process.resourceUsage().maxRSS, KiB). Run one model per process.
import ort from 'onnxruntime-node';
import { createRequire } from 'node:module';
import os from 'node:os';

function parseArgs(argv) {
  const a = { threads: 2, warmup: 1, repeats: 10, model: null, workload: null };
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '--model') { a.model = v; ++i; }
    else if (k === '--workload') { a.workload = v; ++i; }
    else if (k === '--threads') { a.threads = Number(v); ++i; }
    else if (k === '--warmup') { a.warmup = Number(v); ++i; }
    else if (k === '--repeats') { a.repeats = Number(v); ++i; }
    else throw new Error(`unknown argument ${k}`);
  }
  if (!a.model) throw new Error('--model is required');
  return a;
}

function median(xs) {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]);
}

// deterministic standard-normal-ish input (Box-Muller over a small LCG)
function randomInput(n) {
  const data = new Float32Array(n);
  let state = 12345;
  const next = () => { state = (Math.imul(state, 1103515245) + 12345) >>> 0; return (state + 0.5) / 4294967296; };
  for (let i = 0; i < n; ++i) {
    data[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  }
  return data;
}

const args = parseArgs(process.argv.slice(2));
const session = await ort.InferenceSession.create(args.model, {
  executionProviders: ['cpu'],
  intraOpNumThreads: args.threads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
});
const inName = session.inputNames[0];
const meta = session.inputMetadata?.[0];
let dims = meta?.shape;
if (!dims || dims.some((d) => typeof d !== 'number')) {
  throw new Error(`model input ${inName} must have a static shape, got ${JSON.stringify(dims)}`);
}
const numel = dims.reduce((x, y) => x * y, 1);
const feeds = { [inName]: new ort.Tensor('float32', randomInput(numel), dims) };

for (let i = 0; i < args.warmup; ++i) await session.run(feeds);
const times = [];
for (let i = 0; i < args.repeats; ++i) {
  const t0 = process.hrtime.bigint();
  await session.run(feeds);
  times.push(Number(process.hrtime.bigint() - t0) / 1e6);
}

const require = createRequire(import.meta.url);
let ortVersion = 'unknown';
try { ortVersion = require('onnxruntime-node/package.json').version; } catch { /* ignore */ }
const r3 = (x) => Math.round(x * 1000) / 1000;
console.log(JSON.stringify({
  framework: 'onnxruntime-node',
  workload: args.workload ?? args.model,
  model: args.model,
  input: dims,
  threads: args.threads,
  warmup: args.warmup,
  repeats: args.repeats,
  median_ms: r3(median(times)),
  min_ms: r3(Math.min(...times)),
  max_ms: r3(Math.max(...times)),
  peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024 * 10) / 10,
  onnxruntime_node: ortVersion,
  node: process.version,
  host: os.hostname(),
}));
