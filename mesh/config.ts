/**
 * Typed configuration from environment variables, validated once at start.
 *
 * A service declares what it reads:
 *
 *   const config = loadConfig({
 *     ...meshSettings,                       // DATABASE_URL, LOG_LEVEL, ... (shared by every process)
 *     PORT: port(servicePorts.catalog, 'gRPC listen port'),
 *   });
 *   config.PORT          // number
 *   config.DATABASE_URL  // string | undefined
 *
 * A missing or malformed value ends the process with one line on stderr that
 * names every offending variable and what was expected, e.g.
 *   config: PORT must be a TCP port (0-65535), got "http"
 * `parseConfig` does the same work but throws `ConfigError`, for tests and tools.
 */

/** One environment variable: how to read it, its default, what it is for. */
export interface Setting<T> {
  /** Human-readable type, used in error messages and in the docs table ("TCP port", "one of a|b"). */
  readonly expected: string;
  /** Default as written in the environment, shown in docs; undefined means required or optional-without-default. */
  readonly defaultText: string | undefined;
  /** True when an unset variable is fine (the value is then the default, or undefined). */
  readonly optional: boolean;
  /** What the variable is for (one sentence). */
  readonly doc: string;
  /** Turns the raw text into a value, or returns an Error-ish reason string. */
  parse(raw: string): T | Invalid;
  /** Value when the variable is unset or empty. */
  readonly fallback: T;
}

/** A parse failure: the reason reads after "must be". */
export class Invalid {
  constructor(readonly reason?: string) {}
}

export type SettingsSpec = Record<string, Setting<unknown>>;
export type Config<S extends SettingsSpec> = { readonly [K in keyof S]: S[K] extends Setting<infer T> ? T : never };

/** Thrown by parseConfig; `message` is the single line loadConfig prints. */
export class ConfigError extends Error {
  constructor(readonly problems: ReadonlyArray<{ variable: string; problem: string }>) {
    super(`config: ${problems.map((p) => `${p.variable} ${p.problem}`).join('; ')}`);
    this.name = 'ConfigError';
  }
}

/** Validates `env` against `spec`; throws ConfigError listing every bad variable. */
export function parseConfig<S extends SettingsSpec>(spec: S, env: NodeJS.ProcessEnv = process.env): Config<S> {
  const out: Record<string, unknown> = {};
  const problems: { variable: string; problem: string }[] = [];
  for (const [name, setting] of Object.entries(spec)) {
    const raw = env[name]?.trim();
    if (raw === undefined || raw === '') {
      if (!setting.optional) problems.push({ variable: name, problem: `is required: expected ${setting.expected}` });
      out[name] = setting.fallback;
      continue;
    }
    const value = setting.parse(raw);
    if (value instanceof Invalid) {
      problems.push({
        variable: name,
        problem: `must be ${value.reason ?? setting.expected}, got ${JSON.stringify(clip(raw))}`,
      });
      continue;
    }
    out[name] = value;
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(out) as Config<S>;
}

/**
 * Validates the process environment against `spec`. On a bad value it writes
 * one line to stderr and exits with code 78 (EX_CONFIG): a process that cannot
 * read its configuration must not half-start.
 */
export function loadConfig<S extends SettingsSpec>(spec: S, env: NodeJS.ProcessEnv = process.env): Config<S> {
  try {
    return parseConfig(spec, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(78);
  }
}

function clip(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function setting<T>(
  expected: string,
  parse: (raw: string) => T | Invalid,
  opts: { fallback: T; defaultText?: string; optional: boolean; doc?: string },
): Setting<T> {
  return {
    expected,
    parse,
    fallback: opts.fallback,
    defaultText: opts.defaultText,
    optional: opts.optional,
    doc: opts.doc ?? '',
  };
}

// ---- builders -----------------------------------------------------------------

/** A TCP port 0-65535 (0 = any free port). */
export function port(defaultValue?: number, doc?: string): Setting<number> {
  return integer({ min: 0, max: 65535, default: defaultValue, doc, expected: 'a TCP port (0-65535)' });
}

/** An integer within [min, max]. Required when there is no default. */
export function integer(opts: {
  min?: number;
  max?: number;
  default?: number;
  doc?: string;
  expected?: string;
}): Setting<number> {
  const min = opts.min ?? Number.MIN_SAFE_INTEGER;
  const max = opts.max ?? Number.MAX_SAFE_INTEGER;
  const expected =
    opts.expected ??
    `an integer${opts.min !== undefined || opts.max !== undefined ? ` (${opts.min ?? '…'}-${opts.max ?? '…'})` : ''}`;
  return setting<number>(
    expected,
    (raw) => {
      if (!/^-?\d+$/.test(raw)) return new Invalid();
      const n = Number(raw);
      return Number.isSafeInteger(n) && n >= min && n <= max ? n : new Invalid();
    },
    {
      fallback: opts.default as number,
      defaultText: opts.default?.toString(),
      optional: opts.default !== undefined,
      doc: opts.doc,
    },
  );
}

/** Any non-empty text. Required when there is no default. */
export function string(defaultValue?: string, doc?: string): Setting<string> {
  return setting<string>('a non-empty string', (raw) => raw, {
    fallback: defaultValue as string,
    defaultText: defaultValue,
    optional: defaultValue !== undefined,
    doc,
  });
}

/** Text that may be unset (undefined). */
export function optionalString(doc?: string): Setting<string | undefined> {
  return setting<string | undefined>('a string', (raw) => raw, { fallback: undefined, optional: true, doc });
}

const URL_PROTOCOLS_ANY: readonly string[] = [];

/** An absolute URL; `protocols` (e.g. ['postgres:', 'postgresql:']) narrows the scheme. Required without default. */
export function url(
  defaultValue?: string,
  doc?: string,
  protocols: readonly string[] = URL_PROTOCOLS_ANY,
): Setting<string> {
  return setting<string>(urlExpected(protocols), (raw) => parseUrl(raw, protocols), {
    fallback: defaultValue as string,
    defaultText: defaultValue,
    optional: defaultValue !== undefined,
    doc,
  });
}

/** An absolute URL that may be unset (undefined), e.g. DATABASE_URL (unset = embedded PGlite). */
export function optionalUrl(doc?: string, protocols: readonly string[] = URL_PROTOCOLS_ANY): Setting<string | undefined> {
  return setting<string | undefined>(urlExpected(protocols), (raw) => parseUrl(raw, protocols), {
    fallback: undefined,
    optional: true,
    doc,
  });
}

function urlExpected(protocols: readonly string[]): string {
  return protocols.length ? `a URL (${protocols.map((p) => `${p}//`).join(' or ')})` : 'an absolute URL';
}

function parseUrl(raw: string, protocols: readonly string[]): string | Invalid {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    return new Invalid();
  }
  if (protocols.length && !protocols.includes(parsed.protocol)) return new Invalid();
  return raw;
}

/** One of a fixed set of words (case-sensitive). */
export function oneOf<const V extends string>(values: readonly V[], defaultValue?: V, doc?: string): Setting<V> {
  const set = new Set<string>(values);
  return setting<V>(`one of ${values.join('|')}`, (raw) => (set.has(raw) ? (raw as V) : new Invalid()), {
    fallback: defaultValue as V,
    defaultText: defaultValue,
    optional: defaultValue !== undefined,
    doc,
  });
}

/** true/false (also 1/0, yes/no, on/off). */
export function boolean(defaultValue: boolean, doc?: string): Setting<boolean> {
  return setting<boolean>(
    'a boolean (true|false)',
    (raw) => {
      const v = raw.toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return true;
      if (['false', '0', 'no', 'off'].includes(v)) return false;
      return new Invalid();
    },
    { fallback: defaultValue, defaultText: String(defaultValue), optional: true, doc },
  );
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration such as "250ms", "5s", "2m", "1h", "7d"; the value is milliseconds. */
/**
 * A duration like 250ms, 5s, 2m, 1h, 7d. `limits` bound it: an interval that drives a timer
 * wants a floor (0s would spin) and a ceiling of 24 days (Node turns a longer timer into 1 ms).
 */
export function duration(defaultValue: string, doc?: string, limits: { min?: string; max?: string } = {}): Setting<number> {
  const read = (raw: string): number | undefined => {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(raw);
    return m ? Math.round(Number(m[1]) * DURATION_UNITS[m[2]!]!) : undefined;
  };
  const min = limits.min === undefined ? 0 : read(limits.min);
  const max = limits.max === undefined ? Infinity : read(limits.max);
  if (min === undefined || max === undefined) throw new TypeError(`duration limits ${limits.min} / ${limits.max} are not durations`);
  const parse = (raw: string): number | Invalid => {
    const ms = read(raw);
    return ms !== undefined && ms >= min && ms <= max ? ms : new Invalid();
  };
  const fallback = parse(defaultValue);
  if (fallback instanceof Invalid) throw new TypeError(`duration default ${defaultValue} is not a duration within its limits`);
  const range = limits.min || limits.max ? ` from ${limits.min ?? '0ms'}${limits.max ? ` to ${limits.max}` : ''}` : '';
  return setting<number>(`a duration like 250ms, 5s, 2m${range}`, parse, {
    fallback,
    defaultText: defaultValue,
    optional: true,
    doc,
  });
}

// ---- the variables every process shares --------------------------------------------

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Default gRPC ports, one per context, so the whole shop can run on one machine. */
export const servicePorts = {
  user: 5001,
  catalog: 5002,
  inventory: 5003,
  order: 5004,
  payment: 5005,
  notification: 5006,
} as const;

/**
 * The settings every service reads (spread into the service's own spec).
 * PORT is per service, so it is not here: add `PORT: port(servicePorts.<context>)`.
 */
export const meshSettings = {
  DATABASE_URL: optionalUrl(
    'Postgres server to use (a Unix socket as libpq writes it: postgres://user@localhost/db?host=/var/run/postgresql); unset = embedded PGlite in DATA_DIR/<context>',
    ['postgres:', 'postgresql:'],
  ),
  DATA_DIR: string('.data', 'Directory holding the embedded PGlite data directories (one per context)'),
  NATS_URL: optionalUrl('NATS server; unset = the dev command starts a nats-server child process', [
    'nats:',
    'tls:',
    'ws:',
    'wss:',
  ]),
  NATS_SUBJECT_PREFIX: optionalString('Prefix for every NATS subject and stream name (tests use a unique one)'),
  LOG_LEVEL: oneOf(LOG_LEVELS, 'info', 'Minimum level of the JSON logs'),
  OTEL_EXPORTER_OTLP_ENDPOINT: optionalUrl('OTLP/HTTP endpoint for traces; unset = spans are not exported (trace ids still reach logs and headers)'),
  SHUTDOWN_GRACE: duration('10s', "How long shutdown waits for in-flight calls before cancelling them; the rest of the shutdown (consumers, relay, NATS, database) gets 15 s more, so keep it 15 s under the orchestrator's limit (terminationGracePeriodSeconds)"),
  DB_POOL: integer({ min: 1, max: 200, default: 10, doc: 'Postgres connections in the pool (DATABASE_URL only)' }),
  DB_PREPARE: boolean(
    true,
    'Named prepared statements, each text parsed and planned once per connection (DATABASE_URL only); false behind a pooler that cannot keep them (PgBouncer in transaction mode before 1.21)',
  ),
} satisfies SettingsSpec;

/** One row per variable, for the README and `--help`. */
export interface SettingDoc {
  variable: string;
  expected: string;
  default: string;
  doc: string;
}

export function describeSettings(spec: SettingsSpec): SettingDoc[] {
  return Object.entries(spec).map(([variable, s]) => ({
    variable,
    expected: s.expected,
    default: s.defaultText ?? (s.optional ? '(unset)' : '(required)'),
    doc: s.doc,
  }));
}

/** The same rows as a Markdown table. */
export function settingsMarkdown(spec: SettingsSpec): string {
  const esc = (s: string) => s.replaceAll('|', '\\|');
  const lines = ['| Variable | Expected | Default | Meaning |', '| --- | --- | --- | --- |'];
  for (const row of describeSettings(spec)) {
    lines.push(`| \`${row.variable}\` | ${esc(row.expected)} | ${esc(row.default)} | ${esc(row.doc)} |`);
  }
  return lines.join('\n');
}

/**
 * The development signing key of access tokens, used when JWT_SECRET is unset so the
 * shop runs from a fresh clone. Public, so anything reachable by others MUST set its own.
 */
export const DEV_JWT_SECRET = 'protomesh-dev-secret-change-me-in-production-0123456789';

/**
 * The JWT_* variables: the user service signs with them, the gateway verifies with them,
 * so both read the same declaration (and the same defaults).
 */
export const jwtSettings = {
  JWT_SECRET: string(DEV_JWT_SECRET, 'HS256 key of the access tokens (development default: set your own anywhere real)'),
  JWT_ISSUER: string('protomesh', 'iss claim of the access tokens'),
  JWT_AUDIENCE: string('protomesh-shop', 'aud claim of the access tokens'),
  JWT_TTL: duration('1h', 'Lifetime of an access token'),
} satisfies SettingsSpec;
