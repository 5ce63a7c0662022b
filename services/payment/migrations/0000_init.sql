CREATE SCHEMA "payment";
--> statement-breakpoint
CREATE TABLE "payment"."inbox" (
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"event_type" text NOT NULL,
	"processed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "inbox_consumer_event_id_pk" PRIMARY KEY("consumer","event_id")
);
--> statement-breakpoint
CREATE TABLE "payment"."outbox" (
	"id" uuid PRIMARY KEY NOT NULL,
	"seq" bigserial NOT NULL,
	"aggregate_id" text NOT NULL,
	"event_type" text NOT NULL,
	"subject" text NOT NULL,
	"payload" "bytea" NOT NULL,
	"headers" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"published_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "payment"."payments" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"order_id" text NOT NULL,
	"user_id" text NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency_code" text NOT NULL,
	"status" text NOT NULL,
	"decline_reason" text DEFAULT '' NOT NULL,
	"card_last4" text DEFAULT '' NOT NULL,
	"authorization_code" text DEFAULT '' NOT NULL,
	"refund_reason" text DEFAULT '' NOT NULL,
	"create_time" timestamp with time zone DEFAULT now() NOT NULL,
	"update_time" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "payments_status" CHECK ("payment"."payments"."status" in ('AUTHORIZED', 'CAPTURED', 'DECLINED', 'VOIDED', 'REFUNDED', 'TOMBSTONE')),
	CONSTRAINT "payments_amount_nonnegative" CHECK ("payment"."payments"."amount_minor" >= 0)
);
--> statement-breakpoint
CREATE INDEX "outbox_unpublished_seq_idx" ON "payment"."outbox" USING btree ("seq") WHERE "payment"."outbox"."published_at" is null;--> statement-breakpoint
CREATE UNIQUE INDEX "payments_order_id_key" ON "payment"."payments" USING btree ("order_id");