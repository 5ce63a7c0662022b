/**
 * Errors in one place: Connect codes, gRPC statuses and HTTP statuses, and the
 * google.rpc error details that travel with them.
 *
 * API
 *   httpStatusFromCode(code: Code): number          Connect / grpc-gateway table
 *   codeFromHttpStatus(status: number): Code        for upstream HTTP failures
 *   grpcStatusFromCode(code: Code): grpc.status     1:1 (same numbers)
 *   codeName(code: Code): string                    "INVALID_ARGUMENT"
 *   codeJsonName(code: Code): string                "invalid_argument" (Connect JSON errors)
 *   toConnectError(e: unknown): ConnectError        a ConnectError as is; anything else INTERNAL, no internals leaked
 *   callCompleted: ConnectError                     the shared reason a finished call's signal is aborted with
 *   encodeStatusDetails(err: ConnectError): Buffer | undefined   google.rpc.Status for grpc-status-details-bin
 *   decodeStatusDetails(bin, code, message, metadata?): ConnectError
 *   invalidArgument(field, description, reason?): ConnectError   + google.rpc.BadRequest
 *   invalidArguments(violations: {field, description, reason?}[]): ConnectError
 *   fieldViolations(err: ConnectError): {field, description, reason}[]
 *   notFound(resourceType, resourceName, message?): ConnectError + google.rpc.ResourceInfo
 *   alreadyExists(resourceType, resourceName, message?): ConnectError + google.rpc.ResourceInfo
 *   failedPrecondition(type, subject, description): ConnectError + google.rpc.PreconditionFailure
 *   unauthenticated(message?), permissionDenied(message?): ConnectError
 *   unavailable(message, retryAfterMs?): ConnectError + google.rpc.RetryInfo
 *
 * Connect's Code enum uses the gRPC status numbers, so code <-> gRPC status is
 * the identity; the functions exist so that no caller has to know that.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import {
  BadRequestSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";

/** What `new Headers(...)` accepts (the DOM lib is not loaded). */
type HeaderInit = ConstructorParameters<typeof Headers>[0];

const httpByCode: Record<Code, number> = {
  [Code.Canceled]: 499,
  [Code.Unknown]: 500,
  [Code.InvalidArgument]: 400,
  [Code.DeadlineExceeded]: 504,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.FailedPrecondition]: 400,
  [Code.Aborted]: 409,
  [Code.OutOfRange]: 400,
  [Code.Unimplemented]: 501,
  [Code.Internal]: 500,
  [Code.Unavailable]: 503,
  [Code.DataLoss]: 500,
  [Code.Unauthenticated]: 401,
};

/** The HTTP status for a code, as Connect and grpc-gateway map it. */
export function httpStatusFromCode(code: Code): number {
  return httpByCode[code] ?? 500;
}

/**
 * The code for an HTTP status that came without a gRPC status (an upstream
 * proxy failure), per the gRPC HTTP-to-gRPC mapping.
 */
export function codeFromHttpStatus(status: number): Code {
  switch (status) {
    case 400:
      return Code.Internal;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.Unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.Unavailable;
    default:
      return Code.Unknown;
  }
}

/** The gRPC status number for a code (the same number). */
export function grpcStatusFromCode(code: Code): GrpcStatus {
  return code as number as GrpcStatus;
}

/** The code for a gRPC status number; unknown numbers are UNKNOWN. */
export function codeFromGrpcStatus(status: number): Code {
  return status in Code && status !== 0 ? (status as Code) : Code.Unknown;
}

/** "INVALID_ARGUMENT": the name gRPC tools and logs use. */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** "invalid_argument": the name in Connect JSON error bodies. */
export function codeJsonName(code: Code): string {
  return codeName(code).toLowerCase();
}

/**
 * A ConnectError for anything thrown by a handler. A ConnectError passes
 * unchanged; anything else is a bug and becomes INTERNAL with a generic
 * message, so stack traces and SQL never reach a caller. The original stays
 * in `cause` for logs.
 */
/**
 * The reason a call's signal is aborted with once the call is over, on either side
 * (mesh/server, mesh/client): one shared object, since aborting without a reason makes
 * Node build a DOMException with a stack trace per call.
 */
export const callCompleted = new ConnectError("the call is complete", Code.Canceled);

export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  return new ConnectError("internal error", Code.Internal, undefined, undefined, e);
}

/**
 * The google.rpc.Status carried in the grpc-status-details-bin trailer, or
 * undefined when the error has no details (then grpc-status and grpc-message
 * say everything).
 */
export function encodeStatusDetails(err: ConnectError): Buffer | undefined {
  if (err.details.length === 0) return undefined;
  const status = create(StatusSchema, {
    code: err.code,
    message: err.rawMessage,
    details: err.details.map((d) =>
      "desc" in d
        ? anyPack(d.desc, create(d.desc, d.value))
        : { typeUrl: `type.googleapis.com/${d.type}`, value: d.value },
    ),
  });
  const bytes = toBinary(StatusSchema, status);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * A ConnectError from a gRPC status received on the wire. The details come
 * from grpc-status-details-bin when present; read them with
 * `err.findDetails(BadRequestSchema)`.
 */
export function decodeStatusDetails(
  bin: Uint8Array | undefined,
  code: Code,
  message: string,
  metadata?: HeaderInit,
): ConnectError {
  const err = new ConnectError(message, code, metadata);
  if (bin !== undefined && bin.byteLength > 0) {
    try {
      const status = fromBinary(StatusSchema, bin);
      err.details = status.details.map((any) => ({
        type: any.typeUrl.substring(any.typeUrl.lastIndexOf("/") + 1),
        value: any.value,
      }));
    } catch {
      // A corrupt details trailer must not hide the status itself.
    }
  }
  return err;
}

/** One invalid field of a request. */
export interface FieldViolation {
  /** Path to the field, e.g. "product.price.amount_minor". */
  field: string;
  /** Why it is invalid, for a developer. */
  description: string;
  /** Optional UPPER_SNAKE_CASE reason, e.g. "REQUIRED". */
  reason?: string;
}

/** INVALID_ARGUMENT naming the field, with a google.rpc.BadRequest detail. */
export function invalidArgument(field: string, description: string, reason?: string): ConnectError {
  return invalidArguments([{ field, description, reason }]);
}

/** INVALID_ARGUMENT for several fields at once; the message names the first. */
export function invalidArguments(violations: FieldViolation[]): ConnectError {
  if (violations.length === 0) throw new Error("invalidArguments needs at least one violation");
  const [first] = violations;
  const more = violations.length > 1 ? ` (and ${violations.length - 1} more)` : "";
  return new ConnectError(`${first.field}: ${first.description}${more}`, Code.InvalidArgument, undefined, [
    {
      desc: BadRequestSchema,
      value: {
        fieldViolations: violations.map((v) => ({
          field: v.field,
          description: v.description,
          reason: v.reason ?? "",
        })),
      },
    },
  ]);
}

/** The field violations carried by an error (empty when it has none). */
export function fieldViolations(err: ConnectError): Required<FieldViolation>[] {
  return err
    .findDetails(BadRequestSchema)
    .flatMap((b) => b.fieldViolations.map((v) => ({ field: v.field, description: v.description, reason: v.reason })));
}

/** NOT_FOUND for a resource, with a google.rpc.ResourceInfo detail. */
export function notFound(resourceType: string, resourceName: string, message?: string): ConnectError {
  return new ConnectError(message ?? `${resourceType} ${resourceName} not found`, Code.NotFound, undefined, [
    { desc: ResourceInfoSchema, value: { resourceType, resourceName } },
  ]);
}

/** ALREADY_EXISTS for a resource, with a google.rpc.ResourceInfo detail. */
export function alreadyExists(resourceType: string, resourceName: string, message?: string): ConnectError {
  return new ConnectError(message ?? `${resourceType} ${resourceName} already exists`, Code.AlreadyExists, undefined, [
    { desc: ResourceInfoSchema, value: { resourceType, resourceName } },
  ]);
}

/** FAILED_PRECONDITION with a google.rpc.PreconditionFailure detail. */
export function failedPrecondition(type: string, subject: string, description: string): ConnectError {
  return new ConnectError(`${subject}: ${description}`, Code.FailedPrecondition, undefined, [
    { desc: PreconditionFailureSchema, value: { violations: [{ type, subject, description }] } },
  ]);
}

/** UNAUTHENTICATED: no (valid) identity. */
export function unauthenticated(message = "authentication required"): ConnectError {
  return new ConnectError(message, Code.Unauthenticated);
}

/** PERMISSION_DENIED: an identity without the right to do this. */
export function permissionDenied(message = "permission denied"): ConnectError {
  return new ConnectError(message, Code.PermissionDenied);
}

/** UNAVAILABLE, optionally telling the client when to retry (google.rpc.RetryInfo). */
export function unavailable(message: string, retryAfterMs?: number): ConnectError {
  const details =
    retryAfterMs === undefined
      ? []
      : [
          {
            desc: RetryInfoSchema,
            value: {
              retryDelay: {
                seconds: BigInt(Math.floor(retryAfterMs / 1000)),
                nanos: (retryAfterMs % 1000) * 1_000_000,
              },
            },
          },
        ];
  return new ConnectError(message, Code.Unavailable, undefined, details);
}
