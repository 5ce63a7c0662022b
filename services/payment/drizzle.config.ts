// drizzle-kit settings for the payment context: `npm run db:generate` (run from the repo root).
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/payment/schema.ts',
  out: './services/payment/migrations',
  schemaFilter: ['payment'],
});
