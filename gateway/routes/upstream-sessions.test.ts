// Upstream HTTP/2 sessions: a peer that stops answering is dropped.
import test from "ava";
import net from "node:net";
import { UpstreamSessions } from "./grpc-proxy.js";

test("a session whose peer never answers pings is replaced", async (t) => {
  // Accepts TCP and then says nothing: a vanished or frozen upstream.
  const sockets: net.Socket[] = [];
  const blackHole = net.createServer((s) => sockets.push(s));
  await new Promise<void>((r) => blackHole.listen(0, "127.0.0.1", r));
  const target = `127.0.0.1:${(blackHole.address() as net.AddressInfo).port}`;
  const sessions = new UpstreamSessions(50, 100);
  try {
    const first = sessions.get(target);
    t.is(sessions.get(target), first, "reused while alive");
    await new Promise((r) => setTimeout(r, 600));
    t.true(first.destroyed, "dropped after an unanswered ping");
    t.not(sessions.get(target), first);
  } finally {
    sessions.close();
    for (const s of sockets) s.destroy();
    blackHole.close();
  }
});

test("a DNS name is resolved and its addresses used (round-robin)", async (t) => {
  const { lookup } = await import("node:dns/promises");
  const http2 = await import("node:http2");
  const addrs = await lookup("localhost", { all: true });
  if (addrs.length !== 1 || addrs[0].address !== "127.0.0.1") {
    t.pass("localhost is not just 127.0.0.1 here");
    return;
  }
  const server = http2.createServer((req, res) => res.end("ok"));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  const sessions = new UpstreamSessions();
  try {
    sessions.get(`localhost:${port}`); // before resolution: the name itself
    await new Promise((r) => setTimeout(r, 100));
    const s = sessions.get(`localhost:${port}`);
    const body = await new Promise<string>((resolve, reject) => {
      const req = s.request({ ":path": "/" });
      let text = "";
      req.on("data", (c) => (text += c));
      req.on("end", () => resolve(text));
      req.on("error", reject);
      req.end();
    });
    t.is(body, "ok");
    t.is(s, sessions.get(`127.0.0.1:${port}`), "the resolved address's session");
  } finally {
    sessions.close();
    server.close();
  }
});
