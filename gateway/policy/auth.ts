// Authentication at the edge: verifies the bearer JWT with jose and decides
// whether the caller may call a method. Only the gateway sets the identity
// metadata services trust (x-mesh-user-id / x-mesh-user-role); whatever a
// client sends under those names is dropped before the call goes upstream.
import { createPublicKey, createSecretKey, type KeyObject } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { jwtVerify, errors as joseErrors } from "jose";
import type { MethodPolicySpec } from "../descriptors.js";
import { EdgeError } from "../errors.js";

export interface Caller {
  readonly userId: string;
  readonly role: "user" | "admin";
}

export interface JwtSettings {
  /** HS256 shared secret (JWT_SECRET, the one the user service signs with). */
  readonly secret?: string;
  /** A PEM public key for RS256/ES256/EdDSA tokens instead of a secret. */
  readonly publicKeyPem?: string;
  readonly issuer: string;
  readonly audience: string;
  /** Tolerated clock skew in seconds. */
  readonly clockToleranceSec?: number;
}

export interface Authenticator {
  /** The verified caller, undefined without a token; throws 401 for a bad token. */
  authenticate(authorization: string | null | undefined): Promise<Caller | undefined>;
}

const realm = 'Bearer realm="protomesh"';

export function unauthenticated(message: string, error?: "invalid_token"): EdgeError {
  const challenge = error ? `${realm}, error="${error}", error_description="${message.replace(/"/g, "'")}"` : realm;
  const e = new EdgeError(message, Code.Unauthenticated, 401, { "www-authenticate": challenge });
  e.metadata.set("www-authenticate", challenge);
  return e;
}

export function createAuthenticator(settings: JwtSettings): Authenticator {
  // The key type decides the algorithms: an HMAC secret never accepts an
  // asymmetric algorithm and a public key never accepts HS* (no algorithm
  // confusion), and "none" is never in the list.
  let key: KeyObject;
  let algorithms: string[];
  if (settings.publicKeyPem) {
    key = createPublicKey(settings.publicKeyPem);
    const t = key.asymmetricKeyType;
    algorithms = t === "rsa" ? ["RS256", "RS384", "RS512", "PS256"] : t === "ec" ? ["ES256", "ES384"] : ["EdDSA"];
  } else if (settings.secret) {
    key = createSecretKey(Buffer.from(settings.secret, "utf8"));
    algorithms = ["HS256"];
  } else {
    throw new Error("auth: a JWT secret or public key is required");
  }
  return {
    async authenticate(authorization) {
      if (!authorization) return undefined;
      const m = /^Bearer\s+([A-Za-z0-9_\-.=]+)\s*$/i.exec(authorization);
      if (!m) throw unauthenticated("malformed Authorization header: expected a Bearer token", "invalid_token");
      try {
        const { payload } = await jwtVerify(m[1], key, {
          algorithms,
          issuer: settings.issuer,
          audience: settings.audience,
          requiredClaims: ["sub", "exp"],
          clockTolerance: settings.clockToleranceSec ?? 5,
        });
        const role = payload.role === "admin" ? "admin" : payload.role === "user" ? "user" : undefined;
        if (!payload.sub || !role) throw unauthenticated("token lacks a subject or a role", "invalid_token");
        return { userId: payload.sub, role };
      } catch (e) {
        if (e instanceof EdgeError) throw e;
        throw unauthenticated(describeJoseError(e), "invalid_token");
      }
    },
  };
}

function describeJoseError(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return "token expired";
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === "nbf") return "token not yet valid";
    if (e.claim === "aud") return "token audience not accepted";
    if (e.claim === "iss") return "token issuer not accepted";
    return `token claim "${e.claim}" invalid`;
  }
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return "token algorithm not accepted";
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return "token signature invalid";
  return "token invalid";
}

/** Enforces the method's auth level for an (already verified) caller. */
export function authorize(policy: MethodPolicySpec, caller: Caller | undefined): void {
  if (policy.auth === "none") return;
  if (!caller) throw unauthenticated("authentication required");
  if (policy.auth === "admin" && caller.role !== "admin") {
    throw new EdgeError("admin role required", Code.PermissionDenied, 403);
  }
}
