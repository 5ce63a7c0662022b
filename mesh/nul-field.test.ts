import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { EchoRequestSchema, EchoResponseSchema } from '../gen/protomesh/testing/v1/echo_pb.js';
import { nulFieldPath } from './nul-field.js';

const NUL = '\u0000';
const echo = (init: Parameters<typeof create<typeof EchoRequestSchema>>[1]) => create(EchoRequestSchema, init);

test('nulFieldPath names the first string holding U+0000, as the validators name fields', (t) => {
  t.is(nulFieldPath(EchoRequestSchema, echo({ id: 'a', tags: ['x', 'y'], labels: { k: 'v' } })), undefined, 'none');
  t.is(nulFieldPath(EchoRequestSchema, echo({ id: `a${NUL}` })), 'id');
  t.is(nulFieldPath(EchoRequestSchema, echo({ tags: ['x', `${NUL}y`] })), 'tags[1]');
  t.is(nulFieldPath(EchoRequestSchema, echo({ nested: { label: `deep${NUL}` } })), 'nested.label');
  t.is(nulFieldPath(EchoRequestSchema, echo({ note: `n${NUL}` })), 'note', 'a StringValue by its own name');
  t.is(nulFieldPath(EchoRequestSchema, echo({ labels: { ok: 'v', k: `v${NUL}` } })), 'labels["k"]', 'a map value');
  t.is(nulFieldPath(EchoRequestSchema, echo({ labels: { [`k${NUL}`]: 'v' } })), `labels[${JSON.stringify(`k${NUL}`)}]`, 'a map key');
  t.is(nulFieldPath(EchoRequestSchema, echo({ tags: [NUL], id: NUL })), 'id', 'declaration order: id (1) before tags (9)');
  t.is(nulFieldPath(EchoRequestSchema, echo({ data: new Uint8Array([0]) })), undefined, 'bytes may hold 0');
});

test('nulFieldPath answers undefined for anything that is not a message of the given type', (t) => {
  t.is(nulFieldPath(EchoRequestSchema, { id: NUL }), undefined);
  t.is(nulFieldPath(EchoRequestSchema, undefined), undefined);
  t.is(nulFieldPath(EchoRequestSchema, create(EchoResponseSchema)), undefined);
});
