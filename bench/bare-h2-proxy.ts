// A bare node:http2 gRPC frame proxy (no policies, no header handling beyond
// the hop): the floor for any Node HTTP/2 hop, measured beside the gateway by
// bench/gateway-h2load.ts. PORT, UPSTREAM=host:port. Prints "listening".
import http2 from "node:http2";
import net from "node:net";

const [host, port] = (process.env.UPSTREAM ?? "127.0.0.1:5099").split(":");
const upstream = http2.connect(`http://${host}:${port}`, {
  createConnection: () => net.connect({ host, port: Number(port), noDelay: true }),
});
const server = http2.createServer();
server.on("connection", (s: net.Socket) => s.setNoDelay(true));
server.on("stream", (stream, headers) => {
  const up = upstream.request({ ":method": "POST", ":path": headers[":path"], "content-type": headers["content-type"], te: "trailers" });
  stream.on("error", () => {});
  up.on("error", () => {});
  stream.on("close", () => up.closed || up.close());
  up.on("response", (h) => {
    if (stream.destroyed) return;
    delete h[":status"];
    stream.respond({ ":status": 200, ...h }, { waitForTrailers: true });
  });
  up.on("data", (c: Buffer) => stream.destroyed || stream.write(c));
  up.on("trailers", (t) => stream.destroyed || stream.once("wantTrailers", () => stream.sendTrailers(t)));
  up.on("end", () => stream.destroyed || stream.end());
  stream.on("data", (c: Buffer) => up.write(c));
  stream.on("end", () => up.end());
});
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => process.stdout.write("bare h2 proxy listening\n"));
process.on("SIGTERM", () => process.exit(0));
