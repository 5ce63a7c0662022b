// drizzle-kit settings for the catalog context: `npm run db:generate` (run from the repo root).
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/catalog/schema.ts',
  out: './services/catalog/migrations',
  schemaFilter: ['catalog'],
});
