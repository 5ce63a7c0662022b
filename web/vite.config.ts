// The storefront is built into web/dist, which the gateway serves at "/".
// `npm run web:dev` runs Vite's dev server and proxies API calls to the gateway.
import { defineConfig } from 'vite';

const gateway = process.env.GATEWAY_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  root: __dirname,
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
  server: {
    fs: { allow: ['..'] },
    proxy: {
      '/shop.': gateway,
      '/v1': gateway,
    },
  },
});
