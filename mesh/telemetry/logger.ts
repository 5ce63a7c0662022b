// JSON log lines through pino. Every line carries service_name, level and msg; a line
// written while a request or event is being handled also carries trace_id and span_id (from
// the active OpenTelemetry span) and request_id (from the request context). Secrets never
// reach the output: known secret fields are censored wherever they sit (up to three levels
// deep) and bearer tokens / JWTs inside message strings are masked.
import { pino, type DestinationStream, type Level, type LevelWithSilent, type Logger, type LoggerOptions } from "pino";
import { context, trace } from "@opentelemetry/api";
import { serviceIdentity } from "./service-identity.js";
import { currentRequestId } from "./request-context.js";

export type { Logger };
export type LogLevel = LevelWithSilent;
export const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Field names whose values are secrets, matched case-sensitively as written here. */
export const SECRET_FIELDS = [
  "authorization",
  "Authorization",
  "password",
  "passwd",
  "token",
  "access_token",
  "accessToken",
  "refresh_token",
  "refreshToken",
  "id_token",
  "secret",
  "client_secret",
  "clientSecret",
  "api_key",
  "apiKey",
  "x-api-key",
  "cookie",
  "set-cookie",
  "jwt",
];

const CENSOR = "[redacted]";

function redactPaths(): string[] {
  const paths: string[] = [];
  for (const key of SECRET_FIELDS) {
    const seg = /^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `["${key}"]`;
    const top = seg.startsWith(".") ? seg.slice(1) : seg;
    paths.push(top, `*${seg}`, `*.*${seg}`);
  }
  return paths;
}

// "Bearer abc.def", and anything shaped like a JWT (three base64url parts, header starts eyJ).
const BEARER = /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/gi;
const JWT = /\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/g;

export function maskSecretsInText(text: string): string {
  return text.replace(BEARER, `$1 ${CENSOR}`).replace(JWT, CENSOR);
}

function traceFields(): Record<string, string> {
  const out: Record<string, string> = {};
  const sc = trace.getSpanContext(context.active());
  if (sc && trace.isSpanContextValid(sc)) {
    out.trace_id = sc.traceId;
    out.span_id = sc.spanId;
  }
  const requestId = currentRequestId();
  if (requestId) out.request_id = requestId;
  return out;
}

function initialLevel(): LogLevel {
  const wanted = process.env.LOG_LEVEL?.trim().toLowerCase();
  return wanted && (LOG_LEVELS as string[]).includes(wanted) ? (wanted as LogLevel) : "info";
}

export interface LoggerSetup {
  serviceName?: string;
  level?: LogLevel;
  /** Where lines go; stdout by default. Tests pass a stream to read them back. */
  destination?: DestinationStream;
}

/** A root logger with the mesh conventions. Most code wants `logger` or `createLogger()`. */
export function createRootLogger(setup: LoggerSetup = {}): Logger {
  const options: LoggerOptions = {
    level: setup.level ?? initialLevel(),
    base: { service_name: setup.serviceName ?? serviceIdentity().name },
    messageKey: "msg",
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    mixin: traceFields,
    redact: { paths: redactPaths(), censor: CENSOR },
    hooks: {
      // Mask tokens that were pasted into a message string rather than a field.
      logMethod(args, method) {
        for (let i = 0; i < args.length; i++) {
          if (typeof args[i] === "string") (args as unknown[])[i] = maskSecretsInText(args[i] as string);
        }
        return method.apply(this, args as Parameters<typeof method>);
      },
    },
  };
  return setup.destination ? pino(options, setup.destination) : pino(options);
}

/** The process's root logger. */
export const logger: Logger = createRootLogger();

// pino children copy the level when created; remember them so a live level change reaches all.
const children = new Set<WeakRef<Logger>>();

/** A child of the root logger (e.g. `createLogger({ module: "relay" })`) that follows level changes. */
export function createLogger(bindings: Record<string, unknown> = {}): Logger {
  const child = logger.child(bindings);
  children.add(new WeakRef(child));
  return child;
}

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === "string" && (LOG_LEVELS as string[]).includes(value);
}

/** Change the level of the root logger and every logger made by createLogger. */
export function setLogLevel(level: LogLevel): void {
  if (!isLogLevel(level)) throw new Error(`log level must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(level)}`);
  logger.level = level;
  for (const ref of children) {
    const child = ref.deref();
    if (child) child.level = level;
    else children.delete(ref);
  }
}

export type { Level };
