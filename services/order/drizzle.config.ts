// drizzle-kit settings for the order context: `npm run db:generate` (run from the repo root).
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/order/schema.ts',
  out: './services/order/migrations',
  schemaFilter: ['order'],
});
