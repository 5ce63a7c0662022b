/**
 * Where a process's CPU went, from the `.cpuprofile` files `node --cpu-prof` writes: per file,
 * how busy the process was in the window, then the functions with the most self time and the
 * project's own functions (and its dependencies', by package) with the most inclusive time.
 *
 *   npx tsx bench/cpuprofile-summary.ts <dir or files...> [--from µs] [--to µs] [--top 25]
 *
 * --from/--to keep only samples inside a window of the monotonic clock, in microseconds (V8's
 * profile timestamps are CLOCK_MONOTONIC, as `process.hrtime`): bench/orders.ts prints the
 * window of its measured load as `window_monotonic_us`, so a profile of the whole shop
 * (STACK_NODE_FLAGS='--cpu-prof --cpu-prof-dir=DIR') can be read for the load alone.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: { from: { type: 'string' }, to: { type: 'string' }, top: { type: 'string', default: '25' } },
});
if (positionals.length === 0) {
  process.stderr.write('usage: npx tsx bench/cpuprofile-summary.ts <dir or .cpuprofile files...> [--from µs] [--to µs] [--top N]\n');
  process.exit(2);
}
const from = args.from ? Number(args.from) : -Infinity;
const to = args.to ? Number(args.to) : Infinity;
const TOP = Number(args.top);

const files = positionals.flatMap((p) =>
  statSync(p).isDirectory() ? readdirSync(p).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(p, f)) : [p],
);

/** A frame's name with where it lives: `fn (pkg/file:line)` for dependencies, `fn (path:line)` for ours. */
function where(url: string): string {
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) return url.slice(nm + 'node_modules/'.length);
  return url.replace(/^file:\/\//, '').replace(process.cwd() + '/', '');
}
function packageOf(url: string): string {
  const nm = url.lastIndexOf('node_modules/');
  if (nm < 0) return url.startsWith('node:') || url === '' ? 'node' : 'project';
  const rest = url.slice(nm + 'node_modules/'.length).split('/');
  return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
}

for (const file of files) {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // Sample time: each sample's delta belongs to it; keep the ones inside the window.
  const selfUs = new Map<number, number>();
  let t = profile.startTime;
  let windowUs = 0;
  let first = Infinity;
  let last = -Infinity;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i]!;
    if (t < from || t > to) continue;
    const d = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(profile.samples[i]!, (selfUs.get(profile.samples[i]!) ?? 0) + d);
    windowUs += d;
    first = Math.min(first, t);
    last = Math.max(last, t);
  }
  if (windowUs === 0) {
    console.log(`\n== ${basename(file)}: no samples in the window`);
    continue;
  }
  const label = (n: ProfileNode) => `${n.callFrame.functionName || '(anonymous)'} (${where(n.callFrame.url)}:${n.callFrame.lineNumber + 1})`;
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const byPackage = new Map<string, number>();
  let idle = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const name = node.callFrame.functionName;
    if (name === '(idle)') {
      idle += us;
      continue;
    }
    const key = node.callFrame.url ? label(node) : name;
    self.set(key, (self.get(key) ?? 0) + us);
    byPackage.set(node.callFrame.url ? packageOf(node.callFrame.url) : name, (byPackage.get(node.callFrame.url ? packageOf(node.callFrame.url) : name) ?? 0) + us);
    // Inclusive: once per distinct frame on the stack (recursion counted once).
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur)!;
      if (!n.callFrame.url || n.callFrame.url.includes('node_modules') || n.callFrame.url.startsWith('node:')) continue;
      const k = label(n);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + us);
    }
  }
  const busy = windowUs - idle;
  const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)} %`;
  const top = (m: Map<string, number>, n: number) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n);
  // Which program it is: the services/<name> folder (or the top folder) its own frames come from.
  const folders = new Map<string, number>();
  for (const n of profile.nodes) {
    const m = /\/(services\/[^/]+|gateway|bench|scripts)\//.exec(n.callFrame.url);
    if (m && !n.callFrame.url.includes('node_modules')) folders.set(m[1]!, (folders.get(m[1]!) ?? 0) + 1);
  }
  const program = [...folders].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '?';
  console.log(`\n== ${basename(file)} (${program}): ${((last - first) / 1e6).toFixed(1)} s sampled, busy ${((100 * busy) / windowUs).toFixed(1)} % (percentages below are of busy time)`);
  console.log('-- by package (self)');
  for (const [k, us] of top(byPackage, 12)) console.log(`${pct(us)}  ${k}`);
  console.log('-- self');
  for (const [k, us] of top(self, TOP)) console.log(`${pct(us)}  ${k}`);
  console.log('-- the project\'s own frames, inclusive');
  for (const [k, us] of top(inclusive, TOP)) console.log(`${pct(us)}  ${k}`);
}
