/** The user context's SQL, through drizzle: one method per question the service asks. */
import { randomUUID } from 'node:crypto';
import { desc, eq, getTableColumns, sql } from 'drizzle-orm';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { create } from '@bufbuild/protobuf';
import { resultRows, type Database } from '../../mesh/db.js';
import type { EventsTx } from '../../mesh/events/db.js';
import { enqueueEvent } from '../../mesh/events/outbox.js';
import { UserRegisteredSchema } from '../../gen/shop/user/v1/user_pb.js';
import { LATEST_AWARDS_LIMIT, type RoleName } from './domain.js';
import { outbox, pointsAwards, users, type PointsAwardRow, type UserRow } from './schema.js';

export interface NewUser {
  /** Already normalised (domain.normalizeEmail). */
  email: string;
  passwordHash: string;
  displayName: string;
  role: RoleName;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class UserRepository {
  /** `subjectPrefix`: NATS_SUBJECT_PREFIX, for the subjects of outbox rows. */
  constructor(
    private readonly db: Database,
    private readonly subjectPrefix = '',
  ) {}

  /**
   * Inserts the account and its UserRegistered outbox row in one transaction.
   * The unique email index decides a race between two registrations of one
   * address: the loser inserts nothing, writes no event, and gets undefined.
   */
  async register(u: NewUser): Promise<UserRow | undefined> {
    return this.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(users)
        .values({ id: randomUUID(), ...u })
        .onConflictDoNothing({ target: users.email })
        .returning();
      if (!row) return undefined;
      await enqueueEvent(
        tx,
        outbox,
        UserRegisteredSchema,
        create(UserRegisteredSchema, {
          userId: row.id,
          email: row.email,
          displayName: row.displayName,
          occurTime: timestampFromDate(row.createTime),
        }),
        { aggregateId: row.id, prefix: this.subjectPrefix },
      );
      return row;
    });
  }

  async findByEmail(email: string): Promise<UserRow | undefined> {
    const [row] = await this.db.select().from(users).where(eq(users.email, email));
    return row;
  }

  /** Undefined for an id that is not a UUID (ids come from request metadata). */
  async findById(id: string): Promise<UserRow | undefined> {
    if (!UUID.test(id)) return undefined;
    const [row] = await this.db.select().from(users).where(eq(users.id, id));
    return row;
  }

  async setRole(id: string, role: RoleName): Promise<void> {
    await this.db.update(users).set({ role }).where(eq(users.id, id));
  }

  /** The balance (sum of all awards) and the latest awards, newest first. */
  /**
   * The balance and the latest awards from one statement, so one snapshot: read apart, an
   * award committed between the two reads showed in the list but not in the balance (a CI
   * run saw balance 0 beside the order's award). The window sum runs before the LIMIT, so
   * the balance counts every award, not only the page.
   */
  async points(userId: string): Promise<{ balance: bigint; awards: PointsAwardRow[] }> {
    const rows = await this.db
      .select({ ...getTableColumns(pointsAwards), balance: sql<string>`(sum(${pointsAwards.points}) over ())::text` })
      .from(pointsAwards)
      .where(eq(pointsAwards.userId, userId))
      .orderBy(desc(pointsAwards.seq))
      .limit(LATEST_AWARDS_LIMIT);
    const balance = BigInt(rows[0]?.balance ?? '0');
    return { balance, awards: rows.map(({ balance: _, ...award }) => award) };
  }
}

/**
 * Records the points an order earned, inside the consumer's transaction. The
 * order id is the primary key, so even an event id the inbox has not seen
 * (a republished copy with a new id) cannot award an order twice.
 * Returns false when the order had already been awarded.
 */
export async function awardPoints(
  tx: EventsTx,
  award: { orderId: string; userId: string; points: bigint },
): Promise<boolean> {
  // awardPointsMany with one: the same statement text whether a consumer batches or not
  // (and not drizzle's insert builder, which was ~15 % of this process's CPU under the
  // orders bench: it maps every column of every call).
  return (await awardPointsMany(tx, [award])).length > 0;
}

/**
 * awardPoints for many orders in ONE statement whatever their number (the awards travel as
 * one jsonb parameter, so every batch size is the same statement text, prepared once per
 * connection: mesh/db-prepared.ts), in the order given (seq follows it). An order already
 * awarded, or twice in `awards`, is awarded once. Returns the order ids awarded now.
 */
export async function awardPointsMany(
  tx: EventsTx,
  awards: { orderId: string; userId: string; points: bigint }[],
): Promise<string[]> {
  if (awards.length === 0) return [];
  const rows = awards.map((a) => ({ order_id: a.orderId, user_id: a.userId, points: a.points.toString() }));
  const inserted = resultRows<{ order_id: string }>(
    await tx.execute(sql`insert into "user".points_awards (order_id, user_id, points)
      select x.order_id, x.user_id, x.points
      from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as x(order_id text, user_id text, points bigint)
      on conflict (order_id) do nothing
      returning order_id`),
  );
  return inserted.map((r) => r.order_id);
}
