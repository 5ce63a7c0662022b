import test from "ava";
import { IdPool } from "./ids.js";

test("trace ids are 32 and span ids 16 lowercase hex digits, never all zeros", (t) => {
  const ids = new IdPool();
  for (let i = 0; i < 2_000; i++) {
    const traceId = ids.generateTraceId();
    const spanId = ids.generateSpanId();
    t.regex(traceId, /^[0-9a-f]{32}$/);
    t.regex(spanId, /^[0-9a-f]{16}$/);
    t.not(traceId, "0".repeat(32));
    t.not(spanId, "0".repeat(16));
  }
});

test("ids do not repeat across pool refills", (t) => {
  const ids = new IdPool();
  const seen = new Set<string>();
  // 3,000 span ids: six refills of the 512-id pool.
  for (let i = 0; i < 3_000; i++) seen.add(ids.generateSpanId());
  t.is(seen.size, 3_000);
  const traces = new Set<string>();
  for (let i = 0; i < 1_000; i++) traces.add(ids.generateTraceId());
  t.is(traces.size, 1_000);
});

test("two pools give different ids", (t) => {
  t.not(new IdPool().generateTraceId(), new IdPool().generateTraceId());
});
