/**
 * The notification service process: the notification database, the live feed
 * (LISTEN), NotificationService, consumers of OrderConfirmed / OrderCancelled /
 * PaymentFailed, the NotificationSent outbox, and the shared process wiring of
 * mesh/app.ts (streams, relay, health, registry, graceful shutdown).
 *
 *   npm run start:notification     PORT (5006), DATABASE_URL (unset = PGlite in DATA_DIR/notification),
 *                                  NATS_URL, NATS_SUBJECT_PREFIX, LOG_LEVEL, ...
 *
 * Replicas: any number. The consumers are durable and shared (each event is
 * handled by one replica), and every replica LISTENs for recorded
 * notifications (feed.ts), so a watcher on any replica hears them all. On
 * shutdown the server drains first: watch streams end with UNAVAILABLE so
 * clients reconnect to another replica.
 */
import { NotificationSentSchema, NotificationService } from '../../gen/shop/notification/v1/notification_pb.js';
import { eventConsumerSettings, runServiceMain, serviceAppSettings, startServiceApp, type ServiceApp } from '../../mesh/app.js';
import { loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { listenFromDb } from '../../mesh/events/listen.js';
import { serve } from '../../mesh/server.js';
import { notificationConsumers } from './consumers.js';
import { NotificationFeed } from './feed.js';
import { NotificationRepository } from './repository.js';
import { outbox } from './schema.js';
import { createNotificationService } from './service.js';

export const notificationMigrations = new URL('./migrations', import.meta.url).pathname;

export const notificationSettings = {
  ...meshSettings,
  ...serviceAppSettings,
  ...eventConsumerSettings,
  PORT: port(servicePorts.notification, 'gRPC listen port of the notification service'),
};
export type NotificationConfig = Config<typeof notificationSettings>;

export type NotificationApp = ServiceApp<{ feed: NotificationFeed }>;

/** Starts the service in this process; tests call it with their own config. */
export function startNotification(config: NotificationConfig, host?: string): Promise<NotificationApp> {
  return startServiceApp({
    name: 'notification',
    config,
    host,
    migrationsFolder: notificationMigrations,
    publishes: [NotificationSentSchema],
    outbox,
    setup: async ({ db, database, prefix, log }) => {
      const repo = new NotificationRepository(db);
      const listen = listenFromDb(database.db);
      if (!listen) throw new Error('the database client cannot LISTEN: WatchNotifications needs postgres.js or PGlite');
      const feed = new NotificationFeed({
        listen,
        load: (id) => repo.findById(id),
        onError: (err) => log.error({ err }, 'notification feed failed'),
      });
      // LISTEN before the consumers start (they start after setup), so nothing recorded from
      // here on is missed by a watcher.
      await feed.start();
      return {
        services: [serve(NotificationService, createNotificationService({ repo, feed }))],
        consumers: notificationConsumers(prefix),
        background: [{ name: 'feed', stop: () => feed.stop() }],
        expose: { feed },
      };
    },
  });
}

runServiceMain(import.meta.url, () => startNotification(loadConfig(notificationSettings)));
