import test from "ava";
import { Writable } from "node:stream";
import { trace } from "@opentelemetry/api";
import { createRootLogger, maskSecretsInText, setLogLevel, createLogger, logger } from "./logger.js";
import { startTracing } from "./tracing.js";
import { runWithRequestContext } from "./request-context.js";

function capture() {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split("\n").filter(Boolean)) {
        raw.push(l);
        lines.push(JSON.parse(l));
      }
      done();
    },
  });
  return { lines, raw, log: createRootLogger({ serviceName: "logger-test", destination }) };
}

test.before(async () => {
  // In-process tracing without instrumentations: enough for an active span.
  await startTracing({ exporter: "none", instrumentations: [] });
});

test("a line inside a span and a request carries service, level, msg, trace, span and request ids", async (t) => {
  const { lines, log } = capture();
  await trace.getTracer("test").startActiveSpan("work", async (span) => {
    await runWithRequestContext("req-1", async () => {
      await new Promise((r) => setTimeout(r, 1)); // across an await
      log.info("inside");
    });
    const ids = span.spanContext();
    span.end();
    const line = lines.at(-1)!;
    t.like(line, { service_name: "logger-test", level: "info", msg: "inside", request_id: "req-1" });
    t.is(line.trace_id, ids.traceId);
    t.is(line.span_id, ids.spanId);
  });
  log.info("outside");
  t.is(lines.at(-1)!.trace_id, undefined);
  t.is(lines.at(-1)!.request_id, undefined);
});

test("secret fields are redacted at any of three levels and tokens are masked in messages", (t) => {
  const { raw, lines, log } = capture();
  const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEiLCJyb2xlIjoidXNlciJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
  log.warn(
    {
      authorization: `Bearer ${jwt}`,
      password: "hunter2",
      headers: { authorization: "Basic dXNlcjpzZWNyZXQ=", cookie: "sid=s3cr3t", "x-api-key": "k-123" },
      body: { user: { password: "pw-deep", token: "tok-deep" } },
      access_token: "at-1",
      email: "a@example.com",
    },
    `login with Bearer ${jwt} failed`,
  );
  log.info("token in a format arg: %s", `Authorization: Bearer ${jwt}`);
  const text = raw.join("\n");
  for (const secret of [jwt, "hunter2", "dXNlcjpzZWNyZXQ=", "s3cr3t", "k-123", "pw-deep", "tok-deep", "at-1"]) {
    t.false(text.includes(secret), `leaked ${secret}`);
  }
  t.is(lines[0]!.email, "a@example.com", "ordinary fields stay");
  t.is((lines[0]!.headers as Record<string, string>).authorization, "[redacted]");
  t.is(lines[0]!.msg, "login with Bearer [redacted] failed");
});

test("maskSecretsInText leaves ordinary text alone", (t) => {
  t.is(maskSecretsInText("order o-1 placed by u-2"), "order o-1 placed by u-2");
});

test("setLogLevel reaches the root and createLogger children; a bad level is refused", (t) => {
  const child = createLogger({ module: "x" });
  setLogLevel("debug");
  t.is(logger.level, "debug");
  t.is(child.level, "debug");
  setLogLevel("warn");
  t.is(child.level, "warn");
  t.throws(() => setLogLevel("loud" as never), { message: /log level must be one of/ });
  t.is(child.level, "warn");
  setLogLevel("info");
});
