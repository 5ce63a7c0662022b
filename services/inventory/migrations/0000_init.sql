CREATE SCHEMA "inventory";
--> statement-breakpoint
CREATE TABLE "inventory"."inbox" (
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"event_type" text NOT NULL,
	"processed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "inbox_consumer_event_id_pk" PRIMARY KEY("consumer","event_id")
);
--> statement-breakpoint
CREATE TABLE "inventory"."outbox" (
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
CREATE TABLE "inventory"."reservations" (
	"id" text PRIMARY KEY NOT NULL,
	"status" text NOT NULL,
	"lines" jsonb NOT NULL,
	"expire_time" timestamp with time zone NOT NULL,
	"release_reason" text DEFAULT '' NOT NULL,
	"tombstone" boolean DEFAULT false NOT NULL,
	"create_time" timestamp with time zone DEFAULT now() NOT NULL,
	"update_time" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "reservations_status" CHECK ("inventory"."reservations"."status" in ('RESERVED', 'RELEASED', 'COMMITTED'))
);
--> statement-breakpoint
CREATE TABLE "inventory"."stock" (
	"sku" text PRIMARY KEY NOT NULL,
	"on_hand" bigint NOT NULL,
	"reserved" bigint DEFAULT 0 NOT NULL,
	"update_time" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "stock_on_hand_nonnegative" CHECK ("inventory"."stock"."on_hand" >= 0),
	CONSTRAINT "stock_reserved_nonnegative" CHECK ("inventory"."stock"."reserved" >= 0),
	CONSTRAINT "stock_reserved_within_on_hand" CHECK ("inventory"."stock"."reserved" <= "inventory"."stock"."on_hand")
);
--> statement-breakpoint
CREATE INDEX "outbox_unpublished_seq_idx" ON "inventory"."outbox" USING btree ("seq") WHERE "inventory"."outbox"."published_at" is null;--> statement-breakpoint
CREATE INDEX "reservations_open_expire_idx" ON "inventory"."reservations" USING btree ("expire_time") WHERE "inventory"."reservations"."status" = 'RESERVED';