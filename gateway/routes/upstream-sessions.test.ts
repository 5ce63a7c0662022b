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
