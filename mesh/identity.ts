/**
 * The caller's identity inside a service. The gateway verifies the JWT and
 * passes who the caller is as request metadata (x-mesh-user-id,
 * x-mesh-user-role); mesh/client forwards it on every downstream call. Services
 * trust it because only the gateway and other services can reach them.
 *
 * API
 *   type Role = "user" | "admin"
 *   interface Caller { userId: string; role: Role }
 *   USER_ID_HEADER = "x-mesh-user-id", USER_ROLE_HEADER = "x-mesh-user-role"
 *   callerOf(ctx): Caller | undefined         undefined for an anonymous call
 *   requireUser(ctx): Caller                  UNAUTHENTICATED when anonymous
 *   requireAdmin(ctx): Caller                 UNAUTHENTICATED / PERMISSION_DENIED
 *   identityHeaders(caller): Record<string, string>   for the gateway and tests
 */
import type { HandlerContext } from "@connectrpc/connect";
import { permissionDenied, unauthenticated } from "./errors.js";

export type Role = "user" | "admin";

export interface Caller {
  userId: string;
  role: Role;
}

export const USER_ID_HEADER = "x-mesh-user-id";
export const USER_ROLE_HEADER = "x-mesh-user-role";

/** Anything with request headers: a HandlerContext, or a Connect request. */
type WithHeaders = Pick<HandlerContext, "requestHeader">;

/** Who is calling, or undefined for an anonymous call. An unknown role counts as "user". */
export function callerOf(ctx: WithHeaders): Caller | undefined {
  const userId = ctx.requestHeader.get(USER_ID_HEADER)?.trim();
  if (!userId) return undefined;
  const role: Role = ctx.requestHeader.get(USER_ROLE_HEADER)?.trim() === "admin" ? "admin" : "user";
  return { userId, role };
}

/** The signed-in caller; UNAUTHENTICATED for an anonymous call. */
export function requireUser(ctx: WithHeaders): Caller {
  const caller = callerOf(ctx);
  if (!caller) throw unauthenticated("this method needs a signed-in user");
  return caller;
}

/** The signed-in admin; UNAUTHENTICATED when anonymous, PERMISSION_DENIED for other roles. */
export function requireAdmin(ctx: WithHeaders): Caller {
  const caller = requireUser(ctx);
  if (caller.role !== "admin") throw permissionDenied("this method needs the admin role");
  return caller;
}

/** The metadata that carries a caller. */
export function identityHeaders(caller: Caller): Record<string, string> {
  return { [USER_ID_HEADER]: caller.userId, [USER_ROLE_HEADER]: caller.role };
}
