// grpc-message is percent-encoded (gRPC over HTTP/2 spec): printable ASCII
// except '%' as is, everything else as %XX of its UTF-8 bytes.
export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const b of Buffer.from(message, "utf8")) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}
