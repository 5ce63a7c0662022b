// Who this process is, in one place, so logs, metrics, traces and the registry all
// name it the same way. Read once from the environment (and the entry script path).
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { basename, dirname } from "node:path";
import { randomBytes } from "node:crypto";

export interface ServiceIdentity {
  /** Logical service name: "order", "gateway", ... */
  name: string;
  version: string;
  /** Unique per process: survives nothing, identifies one replica. */
  instance: string;
}

let identity: ServiceIdentity | undefined;

function nameFromEntryScript(): string | undefined {
  const entry = process.argv[1];
  if (!entry) return undefined;
  const file = basename(entry).replace(/\.[cm]?[jt]s$/, "");
  // services/<name>/main.ts and gateway/main.ts: the folder names the service.
  if (file === "main" || file === "index") return basename(dirname(entry));
  return file;
}

function packageVersion(): string | undefined {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
    return typeof pkg.version === "string" ? pkg.version : undefined;
  } catch {
    return undefined;
  }
}

/** The identity of this process; `overrides` win the first time it is resolved. */
export function serviceIdentity(overrides: Partial<ServiceIdentity> = {}): ServiceIdentity {
  if (!identity || Object.keys(overrides).length > 0) {
    const name =
      overrides.name ?? process.env.OTEL_SERVICE_NAME ?? process.env.SERVICE_NAME ?? identity?.name ?? nameFromEntryScript() ?? "unknown";
    const version = overrides.version ?? process.env.SERVICE_VERSION ?? identity?.version ?? packageVersion() ?? "0.0.0";
    const instance =
      overrides.instance ??
      process.env.SERVICE_INSTANCE ??
      identity?.instance ??
      `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`.replace(/[^A-Za-z0-9_-]/g, "_");
    identity = { name, version, instance };
  }
  return identity;
}

/** Set the identity explicitly (a service main.ts may call this before anything logs). */
export function setServiceIdentity(overrides: Partial<ServiceIdentity>): ServiceIdentity {
  return serviceIdentity(overrides);
}
