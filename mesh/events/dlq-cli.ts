// Lists, replays and discards dead letters.
//
//   npx tsx mesh/events/dlq-cli.ts list [--consumer <name>] [--limit <n>] [--json]
//   npx tsx mesh/events/dlq-cli.ts show <seq>
//   npx tsx mesh/events/dlq-cli.ts replay <seq> [--keep]
//   npx tsx mesh/events/dlq-cli.ts discard <seq>
//
// NATS_URL (default nats://127.0.0.1:4222) and NATS_SUBJECT_PREFIX pick the server and the
// dead-letter stream. Replay republishes the event to its original subject; consumers that
// already handled it skip it through their inbox, the one that failed handles it now.
import { parseArgs } from "node:util";
import { connect } from "nats";
import { discardDeadLetter, getDeadLetter, listDeadLetters, replayDeadLetter, type DeadLetter } from "./dead-letter.js";
import { subjectPrefixFromEnv } from "./naming.js";

const USAGE = "usage: dlq-cli list [--consumer <name>] [--limit <n>] [--json] | show <seq> | replay <seq> [--keep] | discard <seq>";

export async function main(argv: string[], out: (line: string) => void = console.log): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      consumer: { type: "string" },
      limit: { type: "string" },
      json: { type: "boolean" },
      keep: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const [command, seqArg] = positionals;
  if (values.help || !command) {
    out(USAGE);
    return command ? 0 : 2;
  }
  const prefix = subjectPrefixFromEnv();
  const nc = await connect({ servers: process.env.NATS_URL || "nats://127.0.0.1:4222", name: "dlq-cli" });
  try {
    const js = nc.jetstream();
    const seq = () => {
      const n = Number(seqArg);
      if (!Number.isInteger(n) || n <= 0) throw new Error(`${command}: <seq> must be a positive integer, got ${JSON.stringify(seqArg)}`);
      return n;
    };
    switch (command) {
      case "list": {
        const limit = values.limit ? Number(values.limit) : 100;
        if (!Number.isInteger(limit) || limit <= 0) throw new Error(`--limit must be a positive integer, got ${values.limit}`);
        const dls = await listDeadLetters(js, { prefix, consumer: values.consumer, limit });
        if (values.json) out(JSON.stringify(dls.map(summary), null, 2));
        else if (dls.length === 0) out("no dead letters");
        else for (const d of dls) out(line(d));
        return 0;
      }
      case "show": {
        const d = await getDeadLetter(js, seq(), { prefix });
        if (!d) throw new Error(`dead letter ${seqArg} not found`);
        out(JSON.stringify({ ...summary(d), headers: d.headers, payloadBase64: Buffer.from(d.payload).toString("base64") }, null, 2));
        return 0;
      }
      case "replay": {
        const n = seq();
        const ack = await replayDeadLetter(js, n, { prefix, remove: !values.keep });
        out(`replayed dead letter ${n} -> ${ack.stream} seq ${ack.seq}${ack.duplicate ? " (duplicate: already replayed)" : ""}`);
        return 0;
      }
      case "discard": {
        const n = seq();
        out((await discardDeadLetter(js, n, { prefix })) ? `discarded dead letter ${n}` : `dead letter ${n} not found`);
        return 0;
      }
      default:
        out(USAGE);
        return 2;
    }
  } finally {
    await nc.close();
  }
}

function summary(d: DeadLetter) {
  return {
    seq: d.seq,
    consumer: d.consumer,
    eventType: d.eventType,
    eventId: d.eventId,
    subject: d.subject,
    deliveries: d.deliveries,
    failedAt: d.failedAt.toISOString(),
    error: d.error,
  };
}

function line(d: DeadLetter): string {
  return `${d.seq}\t${d.failedAt.toISOString()}\t${d.consumer}\t${d.eventType}\t${d.eventId}\t${d.deliveries}x\t${d.error}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(`dlq-cli: ${(err as Error).message}`);
      process.exit(1);
    },
  );
}
