// Runs ONNX models with ONNX Runtime (onnxruntime-node, CPU execution provider) on raw float32
// input files and writes each model's first output as raw float32 (the same memory order as
// lightunet's tensors). Used by the ONNX round-trip test (tests/onnx) and bench/bench_onnx.sh.
//
//   node scripts/onnxruntime/run_onnx.cjs [--modules DIR] [--threads 2] [--warmup 0] [--repeats 1]
//        MODEL INPUT.f32 N,C[,D],H,W OUTPUT.f32 [MODEL INPUT DIMS OUTPUT ...]
//
// --modules: the node_modules folder holding onnxruntime-node (default: the one
// scripts/install-onnxruntime.sh fills, ${LIGHTUNET_ORT_DIR:-~/.cache/lightunet/onnxruntime-node}).
// OUTPUT may be '-' to write nothing (timing only). Prints one JSON line per model: output dims,
// and with --repeats the median/min/max of the timed runs in ms (after --warmup runs).
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

function usage(message) {
  process.stderr.write(`run_onnx: ${message}\n`);
  process.exit(2);
}

const args = { threads: 2, warmup: 0, repeats: 1, modules: null, jobs: [] };
const rest = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; ++i) {
  const k = argv[i];
  if (k === '--modules') args.modules = argv[++i];
  else if (k === '--threads') args.threads = Number(argv[++i]);
  else if (k === '--warmup') args.warmup = Number(argv[++i]);
  else if (k === '--repeats') args.repeats = Number(argv[++i]);
  else if (k.startsWith('--')) usage(`unknown option ${k}`);
  else rest.push(k);
}
if (rest.length === 0 || rest.length % 4 !== 0) usage('expected MODEL INPUT DIMS OUTPUT groups of four');
if (!(args.threads >= 1 && args.repeats >= 1 && args.warmup >= 0)) usage('--threads and --repeats must be >= 1, --warmup >= 0');
for (let i = 0; i < rest.length; i += 4) {
  const dims = rest[i + 2].split(',').map(Number);
  if (dims.length < 3 || dims.some((d) => !Number.isInteger(d) || d < 1)) usage(`bad dims '${rest[i + 2]}'`);
  args.jobs.push({ model: rest[i], input: rest[i + 1], dims, output: rest[i + 3] });
}
const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
const modules = args.modules || path.join(process.env.LIGHTUNET_ORT_DIR || path.join(cache, 'lightunet', 'onnxruntime-node'), 'node_modules');
let ort;
try {
  ort = require(path.join(path.resolve(modules), 'onnxruntime-node'));
} catch (e) {
  process.stderr.write(`run_onnx: cannot load onnxruntime-node from ${modules} (run scripts/install-onnxruntime.sh): ${e.message}\n`);
  process.exit(3);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]);
}

(async () => {
  for (const job of args.jobs) {
    const session = await ort.InferenceSession.create(job.model, {
      executionProviders: ['cpu'],
      intraOpNumThreads: args.threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    });
    const count = job.dims.reduce((a, b) => a * b, 1);
    const bytes = fs.readFileSync(job.input);
    if (bytes.length !== count * 4) throw new Error(`${job.input}: ${bytes.length} bytes, ${count * 4} expected for dims ${job.dims}`);
    const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, job.dims) };
    for (let i = 0; i < args.warmup; ++i) await session.run(feeds);
    const times = [];
    let result;
    for (let i = 0; i < args.repeats; ++i) {
      const t0 = process.hrtime.bigint();
      result = await session.run(feeds);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    const out = result[session.outputNames[0]];
    if (job.output !== '-') fs.writeFileSync(job.output, Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength));
    const r3 = (x) => Math.round(x * 1000) / 1000;
    console.log(JSON.stringify({
      model: job.model, output_dims: out.dims, threads: args.threads, warmup: args.warmup, repeats: args.repeats,
      median_ms: r3(median(times)), min_ms: r3(Math.min(...times)), max_ms: r3(Math.max(...times)),
      onnxruntime_node: require(path.join(path.resolve(modules), 'onnxruntime-node', 'package.json')).version,
    }));
    await session.release();
  }
})().catch((e) => {
  process.stderr.write(`run_onnx: ${e.stack || e}\n`);
  process.exit(1);
});
