// drizzle-kit settings for the user context: `npm run db:generate` (run from the repo root).
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/user/schema.ts',
  out: './services/user/migrations',
  schemaFilter: ['user'],
});
