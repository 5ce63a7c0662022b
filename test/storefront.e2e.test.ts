/**
 * The storefront in a real browser against the real stack: Debian's Chromium
 * driven by playwright-core, the six services and the gateway as child
 * processes on a fresh Postgres database and a NATS subject prefix of this run.
 * A shopper registers, searches, fills a cart, places an order, watches it
 * reach CONFIRMED live, and sees the notification and the points. The page is
 * saved to test-results/storefront.png.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { createTestDatabase, testNatsPrefix, testNatsUrl, type TestDatabase } from '../mesh/testing/index.js';
import { ROOT, runSeeds, startGateway, startStack, type RunningGateway, type Stack } from '../scripts/stack.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let db: TestDatabase;
let stack: Stack | undefined;
let gateway: RunningGateway | undefined;
let browser: Browser | undefined;

test.before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  // Build the storefront into a directory of this run, so a dev server's web/dist is left alone.
  const dist = mkdtempSync(path.join(os.tmpdir(), 'protomesh-web-'));
  const build = spawnSync(process.execPath, [path.join(ROOT, 'node_modules/vite/bin/vite.js'), 'build', 'web', '--outDir', dist, '--logLevel', 'error'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (build.status !== 0) throw new Error(`vite build failed:\n${build.stdout}\n${build.stderr}`);

  db = await createTestDatabase();
  const nats = testNatsPrefix();
  const env = { DATABASE_URL: db.url, NATS_URL: testNatsUrl(), NATS_SUBJECT_PREFIX: nats.subjectPrefix, LOG_LEVEL: 'info' };
  await runSeeds({ ...process.env, ...env });
  stack = await startStack({ env });
  gateway = await startGateway(stack, { env: { ...env, STATIC_DIR: dist } });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

test.after.always(async () => {
  await browser?.close();
  await gateway?.stop();
  await stack?.stop();
  await db?.drop();
});

test('a shopper buys a product in the storefront and watches the order confirm live', async (t) => {
  const page = await browser!.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleErrors: string[] = [];
  page.on('pageerror', (err) => consoleErrors.push(err.message));
  await page.goto(gateway!.url + '/');

  // The catalog renders from ListProducts.
  await page.locator('.product').first().waitFor({ timeout: 15_000 });
  t.true((await page.locator('.product').count()) > 1, 'products are listed');

  // Register (then the page signs in with Login).
  const email = `shopper-${Date.now()}@example.test`;
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', 'correct horse battery');
  await page.fill('input[name=displayName]', 'Browser Shopper');
  await page.click('button[name=register]');
  await page.getByText('Signed in as Browser Shopper').waitFor({ timeout: 10_000 });

  // Search narrows the list; add the first hit to the cart.
  const firstName = (await page.locator('.product h3').first().textContent())!.trim();
  const word = firstName.split(/\s+/)[0];
  await page.fill('#query', word);
  await page.click('#search button[type=submit]');
  // (Page-side expressions are strings: this file is typechecked for Node, without DOM types.)
  await page.waitForFunction(
    `[...document.querySelectorAll('.product')].every((p) => p.textContent.toLowerCase().includes(${JSON.stringify(word.toLowerCase())}))`,
    undefined,
    { timeout: 10_000 },
  );
  await page.locator('.product button').first().click();
  t.regex((await page.textContent('#cart'))!, /1 ×/);

  // Place the order and watch it over the server stream until it is final.
  await page.click('#checkout');
  await page.locator('#order-status.CONFIRMED').waitFor({ timeout: 30_000 });
  t.regex((await page.textContent('#order-status'))!, /CONFIRMED/);

  // The order is listed, the notification arrives live, the points are awarded.
  await page.locator('#orders .badge.CONFIRMED').first().waitFor({ timeout: 10_000 });
  await page.locator('#notifications li').first().waitFor({ timeout: 15_000 });
  await page.waitForFunction(`/[1-9]\\d* points/.test(document.getElementById('points').textContent)`, undefined, { timeout: 15_000 });

  mkdirSync(path.join(ROOT, 'test-results'), { recursive: true });
  await page.screenshot({ path: path.join(ROOT, 'test-results', 'storefront.png'), fullPage: true });
  t.deepEqual(consoleErrors, [], 'no uncaught errors in the page');
});
