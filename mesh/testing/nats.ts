/**
 * Unique NATS names for one test run, so parallel runs on one NATS server never
 * see each other's messages or streams.
 *
 *   const nats = testNatsPrefix();
 *   // nats.subjectPrefix = 't_k3x9_a1b2.'  -> subjects 't_k3x9_a1b2.shop.order.v1.OrderPlaced'
 *   // nats.streamPrefix  = 'T_K3X9_A1B2_'  -> stream   'T_K3X9_A1B2_SHOP_ORDER'
 *   // pass nats.subjectPrefix as NATS_SUBJECT_PREFIX to a service under test
 *
 * Streams are not removed by themselves: delete the ones you created in
 * test.after.always (jsm.streams.delete(name) for names starting with streamPrefix).
 */
import { randomBytes } from 'node:crypto';

export interface TestNatsPrefix {
  /** Prepended to every subject; ends with '.'. */
  readonly subjectPrefix: string;
  /** Prepended to every stream / consumer / KV bucket name; upper case, ends with '_'. */
  readonly streamPrefix: string;
}

export function testNatsPrefix(): TestNatsPrefix {
  const id = `t_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  return { subjectPrefix: `${id}.`, streamPrefix: `${id.toUpperCase()}_` };
}

/** NATS server tests use: NATS_URL or nats://127.0.0.1:4222. */
export function testNatsUrl(): string {
  return process.env.NATS_URL || 'nats://127.0.0.1:4222';
}

/**
 * Deletes JetStream streams (KV buckets included) of test runs that started
 * more than `olderThanMinutes` ago: leftovers of killed runs, or of tests that
 * did not clean up. Names carry the run's start time (see testNatsPrefix).
 */
export async function dropLeftoverTestStreams(url = testNatsUrl(), olderThanMinutes = 60): Promise<string[]> {
  const { connect } = await import('nats');
  const nc = await connect({ servers: url, name: 'test-cleanup' });
  try {
    const jsm = await nc.jetstreamManager();
    const cutoff = Date.now() - olderThanMinutes * 60_000;
    const dropped: string[] = [];
    for await (const info of jsm.streams.list()) {
      const match = /^(?:KV_)?T_([0-9A-Z]+)_[0-9A-F]{6}_/i.exec(info.config.name);
      if (!match) continue;
      const created = parseInt(match[1].toLowerCase(), 36);
      if (Number.isFinite(created) && created < cutoff) {
        await jsm.streams.delete(info.config.name);
        dropped.push(info.config.name);
      }
    }
    return dropped;
  } finally {
    await nc.close();
  }
}
