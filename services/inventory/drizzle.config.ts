// drizzle-kit settings for the inventory context: `npm run db:generate` (run from the repo root).
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/inventory/schema.ts',
  out: './services/inventory/migrations',
  schemaFilter: ['inventory'],
});
