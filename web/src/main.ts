// The storefront: a small page over the shop's public APIs through the gateway,
// with Connect-Web and the code generated in gen/. Everything it shows comes
// from RPCs: the catalog, the cart it prices with BatchGetProducts, the order
// it places and then watches over a server stream, notifications and points.
import { Code, ConnectError, createClient, type Interceptor } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-web';
import { CatalogService, type Product } from '../../gen/shop/catalog/v1/catalog_pb.js';
import type { Money } from '../../gen/shop/common/v1/money_pb.js';
import { NotificationService, type Notification } from '../../gen/shop/notification/v1/notification_pb.js';
import { OrderService, OrderStatus, type Order } from '../../gen/shop/order/v1/order_pb.js';
import { UserService } from '../../gen/shop/user/v1/user_pb.js';

const TOKEN_KEY = 'protomesh.token';
const NAME_KEY = 'protomesh.name';

// The bearer token rides on every call; the gateway verifies it.
const withToken: Interceptor = (next) => (req) => {
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) req.header.set('Authorization', `Bearer ${token}`);
  return next(req);
};

const transport = createConnectTransport({ baseUrl: window.location.origin, interceptors: [withToken] });
const catalog = createClient(CatalogService, transport);
const users = createClient(UserService, transport);
const orders = createClient(OrderService, transport);
const notifications = createClient(NotificationService, transport);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const cart = new Map<string, { product: Product; quantity: number }>();
let nextPageToken = '';
let watchAbort: AbortController | undefined;

function formatMoney(m: Money | undefined): string {
  if (!m) return '';
  return new Intl.NumberFormat(undefined, { style: 'currency', currency: m.currencyCode || 'EUR' }).format(
    Number(m.amountMinor) / 100,
  );
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Record<string, unknown> = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props) as HTMLElementTagNameMap[K];
  node.append(...children);
  return node;
}

function showError(err: unknown): void {
  const box = $('error');
  box.textContent = err instanceof ConnectError ? `${Code[err.code]}: ${err.rawMessage}` : String(err);
  box.hidden = false;
  setTimeout(() => (box.hidden = true), 5000);
}

function signedIn(): boolean {
  return localStorage.getItem(TOKEN_KEY) !== null;
}

// ---- catalog --------------------------------------------------------------

async function loadProducts(append = false): Promise<void> {
  const res = await catalog.listProducts({
    pageSize: 24,
    pageToken: append ? nextPageToken : '',
    query: $<HTMLInputElement>('query').value.trim(),
    category: $<HTMLSelectElement>('category').value,
  });
  nextPageToken = res.nextPageToken;
  const grid = $('products');
  if (!append) grid.replaceChildren();
  for (const p of res.products) grid.append(productCard(p));
  if (!append && res.products.length === 0) grid.append(el('p', { textContent: 'No products match.' }));
  $('more').hidden = !nextPageToken;
}

function productCard(p: Product): HTMLElement {
  const add = el('button', { textContent: 'Add to cart' });
  add.dataset.sku = p.sku;
  add.addEventListener('click', () => addToCart(p));
  return el(
    'article',
    { className: 'product' },
    el('h3', { textContent: p.name }),
    el('span', { className: 'sku', textContent: p.sku }),
    el('p', { className: 'desc', textContent: p.description }),
    el('div', {}, ...p.tags.map((t) => el('span', { className: 'tag', textContent: t }))),
    el('span', { className: 'price', textContent: formatMoney(p.price) }),
    add,
  );
}

async function loadCategories(): Promise<void> {
  // Categories are not an RPC of their own: gather them from the first pages.
  const seen = new Set<string>();
  let token = '';
  for (let i = 0; i < 5; i++) {
    const res = await catalog.listProducts({ pageSize: 100, pageToken: token });
    res.products.forEach((p) => seen.add(p.category));
    token = res.nextPageToken;
    if (!token) break;
  }
  const select = $<HTMLSelectElement>('category');
  for (const c of [...seen].sort()) select.append(el('option', { value: c, textContent: c }));
}

// ---- cart and orders ------------------------------------------------------

function addToCart(p: Product): void {
  const line = cart.get(p.sku) ?? { product: p, quantity: 0 };
  line.quantity += 1;
  cart.set(p.sku, line);
  renderCart();
}

function renderCart(): void {
  const list = $('cart');
  list.replaceChildren();
  let total = 0n;
  let currency = 'EUR';
  for (const { product, quantity } of cart.values()) {
    const remove = el('button', { className: 'link', textContent: '×', title: 'Remove' });
    remove.addEventListener('click', () => {
      cart.delete(product.sku);
      renderCart();
    });
    list.append(el('li', {}, `${quantity} × ${product.name} `, remove));
    total += (product.price?.amountMinor ?? 0n) * BigInt(quantity);
    currency = product.price?.currencyCode ?? currency;
  }
  $('cart-total').textContent = cart.size ? `Total ${formatMoney({ amountMinor: total, currencyCode: currency } as Money)}` : 'Empty';
  $<HTMLButtonElement>('checkout').disabled = cart.size === 0 || !signedIn();
}

async function checkout(): Promise<void> {
  const button = $<HTMLButtonElement>('checkout');
  button.disabled = true;
  try {
    const { order } = await orders.placeOrder({
      idempotencyKey: crypto.randomUUID(),
      lines: [...cart.values()].map(({ product, quantity }) => ({ sku: product.sku, quantity: BigInt(quantity) })),
      paymentToken: $<HTMLSelectElement>('card').value,
    });
    cart.clear();
    renderCart();
    if (order) await watchOrder(order.id);
  } catch (err) {
    showError(err);
  } finally {
    renderCart();
  }
}

/** Follows an order over the WatchOrder server stream until a final state. */
async function watchOrder(id: string): Promise<void> {
  const status = $('order-status');
  for await (const { order } of orders.watchOrder({ id })) {
    if (!order) continue;
    const name = OrderStatus[order.status];
    status.className = `status ${name}`;
    status.textContent = `Order ${order.id.slice(0, 8)}: ${name}${order.cancelReason ? ` (${order.cancelReason})` : ''}`;
  }
  await Promise.all([loadOrders(), loadPoints()]);
}

async function loadOrders(): Promise<void> {
  const res = await orders.listOrders({ pageSize: 10 });
  $('orders').replaceChildren(...res.orders.map(orderRow));
}

function orderRow(o: Order): HTMLElement {
  const name = OrderStatus[o.status];
  return el('li', {}, `${o.id.slice(0, 8)} · ${formatMoney(o.total)} `, el('span', { className: `badge ${name}`, textContent: name }));
}

// ---- account, points and notifications --------------------------------------

function renderAuth(): void {
  const panel = $('auth');
  const account = $('account');
  if (signedIn()) {
    panel.hidden = true;
    const out = el('button', { className: 'link', textContent: 'Sign out' });
    out.addEventListener('click', () => {
      localStorage.removeItem(TOKEN_KEY);
      localStorage.removeItem(NAME_KEY);
      watchAbort?.abort();
      location.reload();
    });
    account.replaceChildren(`Signed in as ${localStorage.getItem(NAME_KEY) ?? ''}`, out);
    return;
  }
  panel.hidden = false;
  account.replaceChildren('Not signed in');
  const form = el(
    'form',
    { id: 'auth-form' },
    el('h2', { textContent: 'Sign in or register' }),
    el('input', { name: 'email', type: 'email', placeholder: 'Email', required: true, autocomplete: 'email' }),
    el('input', { name: 'password', type: 'password', placeholder: 'Password (8+ characters)', required: true }),
    el('input', { name: 'displayName', placeholder: 'Name (to register)' }),
    el('button', { type: 'submit', name: 'login', textContent: 'Sign in' }),
    el('button', { type: 'submit', name: 'register', textContent: 'Register' }),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const email = String(data.get('email'));
    const password = String(data.get('password'));
    try {
      if ((e.submitter as HTMLButtonElement | null)?.name === 'register') {
        await users.register({ email, password, displayName: String(data.get('displayName') || email.split('@')[0]) });
      }
      const res = await users.login({ email, password });
      localStorage.setItem(TOKEN_KEY, res.accessToken);
      localStorage.setItem(NAME_KEY, res.user?.displayName ?? email);
      renderAuth();
      renderCart();
      await afterSignIn();
    } catch (err) {
      showError(err);
    }
  });
  panel.replaceChildren(form);
}

async function loadPoints(): Promise<void> {
  const res = await users.getPoints({});
  $('points').textContent = `· ${res.balance} points`;
}

function notificationRow(n: Notification): HTMLElement {
  return el('li', {}, el('strong', { textContent: n.title }), el('br'), n.body);
}

async function loadNotifications(): Promise<void> {
  const res = await notifications.listNotifications({ pageSize: 10 });
  $('notifications').replaceChildren(...res.notifications.map(notificationRow));
}

/** New notifications arrive over a server stream while the page is open. */
async function watchNotifications(): Promise<void> {
  watchAbort = new AbortController();
  try {
    for await (const { notification } of notifications.watchNotifications({}, { signal: watchAbort.signal })) {
      if (notification) $('notifications').prepend(notificationRow(notification));
      void loadPoints().catch(() => {});
    }
  } catch (err) {
    if (!(err instanceof ConnectError && err.code === Code.Canceled)) console.warn('notification stream ended', err);
  }
}

async function afterSignIn(): Promise<void> {
  try {
    await Promise.all([loadOrders(), loadPoints(), loadNotifications()]);
    void watchNotifications();
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
      // An expired token: sign in again.
      localStorage.removeItem(TOKEN_KEY);
      renderAuth();
      renderCart();
      return;
    }
    showError(err);
  }
}

// ---- start -----------------------------------------------------------------

$('search').addEventListener('submit', (e) => {
  e.preventDefault();
  loadProducts().catch(showError);
});
$('category').addEventListener('change', () => loadProducts().catch(showError));
$('more').addEventListener('click', () => loadProducts(true).catch(showError));
$('checkout').addEventListener('click', () => void checkout());

renderAuth();
renderCart();
Promise.all([loadProducts(), loadCategories()]).catch(showError);
if (signedIn()) void afterSignIn();
