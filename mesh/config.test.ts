import test from 'ava';
import { spawnSync } from 'node:child_process';
import {
  ConfigError,
  boolean,
  describeSettings,
  duration,
  integer,
  meshSettings,
  oneOf,
  optionalString,
  optionalUrl,
  parseConfig,
  port,
  settingsMarkdown,
  string,
  url,
} from './config.js';

const spec = {
  PORT: port(5002),
  DATABASE_URL: optionalUrl('db', ['postgres:', 'postgresql:']),
  LOG_LEVEL: oneOf(['debug', 'info', 'warn'], 'info'),
  NAME: string(),
  PREFIX: optionalString(),
  WORKERS: integer({ min: 1, max: 8, default: 2 }),
  VERBOSE: boolean(false),
  TIMEOUT: duration('5s'),
  UPSTREAM: url('http://localhost:8080'),
};

test('defaults apply when variables are unset or empty', (t) => {
  const c = parseConfig(spec, { NAME: 'catalog', PORT: '' });
  t.deepEqual({ ...c }, {
    PORT: 5002,
    DATABASE_URL: undefined,
    LOG_LEVEL: 'info',
    NAME: 'catalog',
    PREFIX: undefined,
    WORKERS: 2,
    VERBOSE: false,
    TIMEOUT: 5000,
    UPSTREAM: 'http://localhost:8080',
  });
});

test('values are parsed into their types', (t) => {
  const c = parseConfig(spec, {
    NAME: 'x',
    PORT: '0',
    DATABASE_URL: 'postgres://root@127.0.0.1:5432/shop',
    LOG_LEVEL: 'debug',
    PREFIX: 't1.',
    WORKERS: '8',
    VERBOSE: 'yes',
    TIMEOUT: '250ms',
    UPSTREAM: 'https://example.com/a',
  });
  t.is(c.PORT, 0);
  t.is(c.DATABASE_URL, 'postgres://root@127.0.0.1:5432/shop');
  t.is(c.LOG_LEVEL, 'debug');
  t.is(c.PREFIX, 't1.');
  t.is(c.WORKERS, 8);
  t.true(c.VERBOSE);
  t.is(c.TIMEOUT, 250);
});

test('a bad value names the variable and what was expected', (t) => {
  const cases: [Record<string, string>, string][] = [
    [{ PORT: 'http' }, 'config: PORT must be a TCP port (0-65535), got "http"'],
    [{ PORT: '70000' }, 'config: PORT must be a TCP port (0-65535), got "70000"'],
    [{ PORT: '50.5' }, 'config: PORT must be a TCP port (0-65535), got "50.5"'],
    [{ DATABASE_URL: 'mysql://x' }, 'config: DATABASE_URL must be a URL (postgres:// or postgresql://), got "mysql://x"'],
    [{ LOG_LEVEL: 'loud' }, 'config: LOG_LEVEL must be one of debug|info|warn, got "loud"'],
    [{ WORKERS: '9' }, 'config: WORKERS must be an integer (1-8), got "9"'],
    [{ VERBOSE: 'maybe' }, 'config: VERBOSE must be a boolean (true|false), got "maybe"'],
    [{ TIMEOUT: '5' }, 'config: TIMEOUT must be a duration like 250ms, 5s, 2m, got "5"'],
    [{ UPSTREAM: 'not a url' }, 'config: UPSTREAM must be an absolute URL, got "not a url"'],
  ];
  for (const [env, message] of cases) {
    const err = t.throws(() => parseConfig(spec, { NAME: 'x', ...env }), { instanceOf: ConfigError });
    t.is(err?.message, message);
    t.false(err?.message.includes('\n'));
  }
});

test('a duration with limits refuses what a timer cannot run: 0 where a floor is set, more than 24 days', (t) => {
  const timers = { INTERVAL: duration('5s', 'how often', { min: '100ms', max: '24d' }) };
  t.is(parseConfig(timers, { INTERVAL: '250ms' }).INTERVAL, 250);
  t.is(parseConfig(timers, { INTERVAL: '24d' }).INTERVAL, 24 * 86_400_000);
  for (const raw of ['0s', '50ms', '30d']) {
    const err = t.throws(() => parseConfig(timers, { INTERVAL: raw }), { instanceOf: ConfigError });
    t.is(err?.message, `config: INTERVAL must be a duration like 250ms, 5s, 2m from 100ms to 24d, got "${raw}"`);
  }
  t.throws(() => duration('1s', 'x', { min: '5s' }), { message: /not a duration within its limits/ }, 'a default outside its own limits');
});

test('a missing required variable is reported, and all problems share one line', (t) => {
  const err = t.throws(() => parseConfig(spec, { PORT: 'x' }), { instanceOf: ConfigError });
  t.is(err?.message, 'config: PORT must be a TCP port (0-65535), got "x"; NAME is required: expected a non-empty string');
  t.deepEqual(
    err?.problems.map((p) => p.variable),
    ['PORT', 'NAME'],
  );
});

test('loadConfig ends the process with one line on stderr', (t) => {
  const script = `
    import { loadConfig, port } from './mesh/config.ts';
    loadConfig({ PORT: port(1) });
    console.log('started');
  `;
  const r = spawnSync(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, PORT: 'abc' },
    encoding: 'utf8',
    cwd: new URL('..', import.meta.url).pathname,
  });
  t.is(r.status, 78);
  t.is(r.stdout, '');
  t.is(r.stderr, 'config: PORT must be a TCP port (0-65535), got "abc"\n');
});

test('the shared settings document themselves', (t) => {
  const rows = describeSettings(meshSettings);
  t.true(rows.some((r) => r.variable === 'DATABASE_URL' && r.default === '(unset)'));
  t.true(rows.some((r) => r.variable === 'LOG_LEVEL' && r.default === 'info'));
  t.true(rows.every((r) => r.doc.length > 0));
  t.regex(settingsMarkdown(meshSettings), /^\| Variable \| Expected \| Default \| Meaning \|/);
  t.is(parseConfig(meshSettings, {}).LOG_LEVEL, 'info');
});
