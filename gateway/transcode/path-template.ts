// google.api.http path templates: parsing and matching.
//
//   Template = "/" Segments [ Verb ] ;
//   Segments = Segment { "/" Segment } ;
//   Segment  = "*" | "**" | LITERAL | Variable ;
//   Variable = "{" FieldPath [ "=" Segments ] "}" ;
//   FieldPath = IDENT { "." IDENT } ;
//   Verb     = ":" LITERAL ;
//
// A variable without "=..." matches one segment ("{id}" is "{id=*}"). "**"
// matches zero or more segments; at most one per template, and it may be
// followed only by literals (so matching never backtracks).

export type Segment =
  | { readonly kind: "literal"; readonly value: string }
  | { readonly kind: "single" }
  | { readonly kind: "multi" };

export interface TemplateVariable {
  /** The request field path, e.g. ["order", "id"]. */
  readonly fieldPath: readonly string[];
  /** Index of the first segment the variable covers. */
  readonly start: number;
  /** Index after the last segment it covers. */
  readonly end: number;
  /** True when the variable covers a "**" (its value may contain "/"). */
  readonly multi: boolean;
}

export interface PathTemplate {
  readonly source: string;
  readonly segments: readonly Segment[];
  readonly verb: string | undefined;
  readonly variables: readonly TemplateVariable[];
}

export class TemplateSyntaxError extends Error {
  constructor(template: string, reason: string) {
    super(`invalid path template "${template}": ${reason}`);
    this.name = "TemplateSyntaxError";
  }
}

const identRe = /^[A-Za-z_][A-Za-z0-9_]*$/;
// RFC 3986 pchar minus "/" and ":" (":" introduces the verb); "{", "}", "*", "=" are template syntax.
const literalRe = /^[A-Za-z0-9\-._~!$&'()+,;@%]+$/;

export function parsePathTemplate(source: string): PathTemplate {
  const fail = (reason: string): never => {
    throw new TemplateSyntaxError(source, reason);
  };
  if (!source.startsWith("/")) fail("must start with '/'");
  let body = source.slice(1);
  let verb: string | undefined;
  // The verb is after the last ':' that is not inside a variable.
  let depth = 0;
  let verbAt = -1;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === "{") depth++;
    else if (c === "}") depth--;
    else if (c === ":" && depth === 0) verbAt = i;
  }
  if (verbAt >= 0) {
    verb = body.slice(verbAt + 1);
    body = body.slice(0, verbAt);
    if (!literalRe.test(verb)) fail(`invalid verb "${verb}"`);
  }
  const segments: Segment[] = [];
  const variables: TemplateVariable[] = [];
  const seen = new Set<string>();
  // Split on '/' outside of braces.
  const parts: string[] = [];
  depth = 0;
  let cur = "";
  for (const c of body) {
    if (c === "{") depth++;
    if (c === "}") depth--;
    if (depth < 0 || depth > 1) fail("unbalanced or nested braces");
    if (c === "/" && depth === 0) {
      parts.push(cur);
      cur = "";
    } else cur += c;
  }
  if (depth !== 0) fail("unbalanced braces");
  parts.push(cur);
  for (const part of parts) {
    if (part === "") fail("empty segment");
    if (part.startsWith("{")) {
      if (!part.endsWith("}")) fail(`variable "${part}" must be a whole segment`);
      const inner = part.slice(1, -1);
      const eq = inner.indexOf("=");
      const path = eq < 0 ? inner : inner.slice(0, eq);
      const fieldPath = path.split(".");
      if (!fieldPath.every((p) => identRe.test(p))) fail(`invalid field path "${path}"`);
      if (seen.has(path)) fail(`field "${path}" bound twice`);
      seen.add(path);
      const sub = eq < 0 ? "*" : inner.slice(eq + 1);
      const start = segments.length;
      let multi = false;
      for (const s of sub.split("/")) {
        const seg = parseSegment(s, fail);
        if (seg.kind === "multi") multi = true;
        segments.push(seg);
      }
      variables.push({ fieldPath, start, end: segments.length, multi });
    } else {
      segments.push(parseSegment(part, fail));
    }
  }
  const multiAt = segments.findIndex((s) => s.kind === "multi");
  if (multiAt >= 0) {
    for (let i = multiAt + 1; i < segments.length; i++) {
      if (segments[i].kind !== "literal") fail("only literals may follow '**'");
    }
  }
  return { source, segments, verb, variables };
}

function parseSegment(s: string, fail: (r: string) => never): Segment {
  if (s === "*") return { kind: "single" };
  if (s === "**") return { kind: "multi" };
  if (s === "" || !literalRe.test(s)) fail(`invalid segment "${s}"`);
  return { kind: "literal", value: s };
}

/**
 * Splits a request path (without query) into raw, still percent-encoded
 * segments and a verb. Returns undefined for a path that does not start with '/'.
 */
export function splitRequestPath(path: string): { segments: string[]; verb: string | undefined } | undefined {
  if (!path.startsWith("/")) return undefined;
  const segments = path.slice(1).split("/");
  const last = segments[segments.length - 1];
  const colon = last.lastIndexOf(":");
  let verb: string | undefined;
  if (colon >= 0) {
    verb = last.slice(colon + 1);
    segments[segments.length - 1] = last.slice(0, colon);
  }
  return { segments, verb };
}

/** Variable bindings of a match: dotted field path -> decoded value. */
export type Bindings = Map<string, string>;

/**
 * Matches split request path segments against a template. `verb` is the
 * request's verb (text after the last ':' of the last segment); a template
 * without a verb sees it as part of the last segment.
 */
export function matchTemplate(
  t: PathTemplate,
  segments: readonly string[],
  verb: string | undefined,
): Bindings | undefined {
  let segs: string[] = segments as string[];
  if (t.verb !== undefined) {
    if (verb !== t.verb) return undefined;
  } else if (verb !== undefined) {
    segs = segments.slice();
    segs[segs.length - 1] = `${segs[segs.length - 1]}:${verb}`;
  }
  const ts = t.segments;
  const multiAt = ts.findIndex((s) => s.kind === "multi");
  // Which request segments each template segment covers: [from, to).
  const spans: Array<[number, number]> = new Array(ts.length);
  if (multiAt < 0) {
    if (segs.length !== ts.length) return undefined;
    for (let i = 0; i < ts.length; i++) {
      if (!segmentMatches(ts[i], segs[i])) return undefined;
      spans[i] = [i, i + 1];
    }
  } else {
    const tail = ts.length - multiAt - 1;
    if (segs.length < multiAt + tail) return undefined;
    for (let i = 0; i < multiAt; i++) {
      if (!segmentMatches(ts[i], segs[i])) return undefined;
      spans[i] = [i, i + 1];
    }
    for (let k = 0; k < tail; k++) {
      const ti = ts.length - 1 - k;
      const si = segs.length - 1 - k;
      if (!segmentMatches(ts[ti], segs[si])) return undefined;
      spans[ti] = [si, si + 1];
    }
    spans[multiAt] = [multiAt, segs.length - tail];
  }
  const bindings: Bindings = new Map();
  for (const v of t.variables) {
    const from = spans[v.start][0];
    const to = spans[v.end - 1][1];
    const raw = segs.slice(from, to);
    let value: string;
    try {
      value = v.multi || v.end - v.start > 1 ? raw.map(decodeKeepingSlash).join("/") : decodeURIComponent(raw[0]);
    } catch {
      return undefined; // malformed percent-encoding: no match
    }
    bindings.set(v.fieldPath.join("."), value);
  }
  return bindings;
}

function segmentMatches(seg: Segment, value: string): boolean {
  switch (seg.kind) {
    case "literal":
      return seg.value === value;
    case "single":
      return value !== "";
    case "multi":
      return true;
  }
}

// Multi-segment variables keep an encoded "/" encoded (the spec's "reserved
// expansion"), so "a%2Fb/c" binds "a%2Fb/c", not "a/b/c".
function decodeKeepingSlash(s: string): string {
  return s
    .split(/%2F/i)
    .map((p) => decodeURIComponent(p))
    .join("%2F");
}

/**
 * Orders templates so the first match is the most specific: a verb first,
 * then more literal segments, then no '**'.
 */
export function specificity(t: PathTemplate): number {
  let literals = 0;
  let multi = 0;
  for (const s of t.segments) {
    if (s.kind === "literal") literals++;
    if (s.kind === "multi") multi = 1;
  }
  return (t.verb !== undefined ? 1_000_000 : 0) + literals * 1000 + t.segments.length * 10 - multi * 5;
}
