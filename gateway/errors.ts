// Errors at the edge: gRPC code <-> HTTP status, and the JSON error body.
import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeJsonName, httpStatusFromCode } from "../mesh/errors.js";

/** gRPC code -> HTTP status, from the one table in mesh/errors (Connect and grpc-gateway). */
export function httpStatusOf(code: Code): number {
  return httpStatusFromCode(code);
}

/** Lower snake case code name as used by Connect ("not_found"). */
export const codeName: (code: Code) => string = codeJsonName;

/** Parses a gRPC code given as a name ("NOT_FOUND", "not_found") or number. */
export function parseCode(s: string): Code | undefined {
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    return n >= 1 && n <= 16 ? (n as Code) : undefined;
  }
  const want = s.toLowerCase().replace(/_/g, "");
  const alias = want === "cancelled" ? "canceled" : want;
  for (let c = 1; c <= 16; c++) {
    if (Code[c].toLowerCase() === alias) return c as Code;
  }
  return undefined;
}

/**
 * A gateway-side error with an HTTP status that no gRPC code carries
 * (405, 413, 415); over RPC protocols its `code` applies.
 */
export class EdgeError extends ConnectError {
  constructor(
    message: string,
    code: Code,
    readonly httpStatus: number,
    readonly httpHeaders: Record<string, string> = {},
  ) {
    super(message, code);
  }

  // ConnectError pins its own prototype (so the error stays a ConnectError
  // everywhere connect-es looks); recognize ours by the status it carries.
  static override [Symbol.hasInstance](v: unknown): boolean {
    return v instanceof ConnectError && typeof (v as { httpStatus?: unknown }).httpStatus === "number";
  }
}

export function badRequest(message: string): EdgeError {
  return new EdgeError(message, Code.InvalidArgument, 400);
}

export function httpStatusOfError(err: ConnectError): number {
  return err instanceof EdgeError ? err.httpStatus : httpStatusOf(err.code);
}

/** Decodes a detail's bytes to JSON when its type is known (else undefined). */
export type DetailDecoder = (typeName: string, value: Uint8Array) => unknown;

/**
 * The JSON body of a REST error: {code, message, details}, details in the
 * Connect JSON shape ({type, value (base64), debug (decoded, when known)}).
 */
export function errorJson(
  err: ConnectError,
  decode?: DetailDecoder,
): { code: string; message: string; details: Array<{ type: string; value: string; debug?: unknown }> } {
  return {
    code: codeName(err.code),
    message: err.rawMessage,
    details: err.details.map((d) => {
      const type = "desc" in d ? d.desc.typeName : d.type;
      const bytes = "desc" in d ? toBinary(d.desc, d.value as MessageShape<DescMessage>) : d.value;
      const debug = decode?.(type, bytes) ?? ("desc" in d ? undefined : d.debug);
      return debug === undefined
        ? { type, value: Buffer.from(bytes).toString("base64") }
        : { type, value: Buffer.from(bytes).toString("base64"), debug };
    }),
  };
}

/** Any thrown value as a ConnectError (unknown errors become INTERNAL without leaking text). */
export function asConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  return ConnectError.from(e, Code.Internal);
}
