/**
 * Prints every environment variable the shop's processes read, as Markdown
 * tables built from the same declarations loadConfig validates (mesh/config),
 * so the README can never drift from the code:
 *
 *   npx tsx scripts/config-docs.ts
 */
import { meshSettings, settingsMarkdown, type SettingsSpec } from '../mesh/config.js';

const processes: [string, string, string][] = [
  ['user', '../services/user/main.js', 'userSettings'],
  ['catalog', '../services/catalog/main.js', 'catalogSettings'],
  ['inventory', '../services/inventory/main.js', 'inventorySettings'],
  ['order', '../services/order/main.js', 'orderSettings'],
  ['payment', '../services/payment/main.js', 'paymentSettings'],
  ['notification', '../services/notification/main.js', 'notificationSettings'],
];

const shared = new Set(Object.keys(meshSettings));
const out: string[] = ['### Every service', '', settingsMarkdown(meshSettings)];
for (const [name, path, exportName] of processes) {
  let spec: SettingsSpec | undefined;
  try {
    spec = ((await import(path)) as Record<string, SettingsSpec | undefined>)[exportName];
  } catch {
    spec = undefined;
  }
  if (!spec) continue;
  const own = Object.fromEntries(Object.entries(spec).filter(([key]) => !shared.has(key)));
  out.push('', `### ${name}`, '', settingsMarkdown(own));
}
process.stdout.write(`${out.join('\n')}\n`);
