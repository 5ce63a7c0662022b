// drizzle-kit settings for the notification context: `npm run db:generate` (run from the repo root).
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/notification/schema.ts',
  out: './services/notification/migrations',
  schemaFilter: ['notification'],
});
