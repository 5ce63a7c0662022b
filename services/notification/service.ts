/**
 * NotificationService handlers: read the request, apply the domain rules, ask
 * the repository (or the live feed), answer. Paging rules live in domain.ts,
 * SQL in repository.ts, the live fan-out in feed.ts.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { invalidArguments, type FieldViolation } from '../../mesh/errors.js';
import { requireUser } from '../../mesh/identity.js';
import {
  NotificationSchema,
  NotificationService,
  type Notification,
} from '../../gen/shop/notification/v1/notification_pb.js';
import { decodePageToken, encodePageToken, isViolation, kindToProto, pageSize } from './domain.js';
import type { NotificationFeed } from './feed.js';
import type { NotificationRepository } from './repository.js';
import type { NotificationRow } from './schema.js';

/** A watcher that falls this far behind is cut off (RESOURCE_EXHAUSTED) rather than buffered without bound. */
export const WATCH_BACKLOG_LIMIT = 1000;

export interface NotificationServiceDeps {
  repo: NotificationRepository;
  feed: NotificationFeed;
}

export function createNotificationService({ repo, feed }: NotificationServiceDeps): ServiceImpl<typeof NotificationService> {
  return {
    async listNotifications(req, ctx) {
      const caller = requireUser(ctx);
      const size = pageSize(req.pageSize);
      const before = decodePageToken(req.pageToken);
      const violations: FieldViolation[] = [size, before].filter(isViolation);
      if (violations.length > 0) throw invalidArguments(violations);
      const { rows, more } = await repo.list(caller.userId, size as number, before as bigint | undefined);
      const last = rows.at(-1);
      return {
        notifications: rows.map(toProto),
        nextPageToken: more && last ? encodePageToken(last.seq) : '',
      };
    },

    /**
     * Live only: the caller's notifications recorded after the stream started,
     * until the caller hangs up (ctx.signal; the generator's finally removes
     * the watcher) or the server drains.
     */
    async *watchNotifications(_req, ctx) {
      const caller = requireUser(ctx);
      const backlog: NotificationRow[] = [];
      let wake: (() => void) | undefined;
      let overflow = false;
      const unsubscribe = feed.subscribe(caller.userId, (row) => {
        if (backlog.length >= WATCH_BACKLOG_LIMIT) overflow = true;
        else backlog.push(row);
        wake?.();
      });
      const onAbort = () => wake?.();
      ctx.signal.addEventListener('abort', onAbort);
      try {
        while (!ctx.signal.aborted) {
          if (overflow) {
            throw new ConnectError('the stream fell too far behind; list notifications and watch again', Code.ResourceExhausted);
          }
          const next = backlog.shift();
          if (next) {
            yield { notification: toProto(next) };
            continue;
          }
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        ctx.signal.removeEventListener('abort', onAbort);
        unsubscribe();
      }
    },
  };
}

export function toProto(row: NotificationRow): Notification {
  return create(NotificationSchema, {
    id: row.id,
    userId: row.userId,
    kind: kindToProto(row.kind),
    title: row.title,
    body: row.body,
    orderId: row.orderId,
    createTime: timestampFromDate(row.createTime),
  });
}
