#!/usr/bin/env node
// Fetch one tensor from a jaxinit server over gRPC, check its xxh3-128 digest,
// and write its raw bytes (little-endian, C order) to a file.
//
// Usage:
//   node fetch.mjs <host:port> <initializer> <seed> <shape> [dtype] <out-file>
//
//   host:port    the server's gRPC address, e.g. 127.0.0.1:50051 (a grpc:// prefix
//                is accepted; grpcs:// uses TLS with the system's root certificates)
//   initializer  a registry name: lecun_normal, normal, glorot_uniform, zeros, ...
//   seed         an integer: the key is jax.random.key(seed)
//   shape        dimensions, comma-separated: 64,32 (an empty string: a scalar)
//   dtype        optional: float32, bfloat16, ... (default: the server's default)
//   out-file     where the raw bytes go; written only once the digest matched
//
// On success prints one line of JSON:
//   {"shape":[64,32],"dtype":"float32","bytes":8192,"digest":"<hex>","request_digest":"<hex>"}
// Exit status: 0 success; 2 usage; 3 the call failed: a gRPC status (the server refused
// the request, or could not be reached) or an `error` chunk, its code, type and message
// on stderr; 4 the answer failed its checks (digest mismatch, chunks out of order or
// short, no digest). The out-file is written only on success.
//
// The proto is loaded at run time from ../../proto/jaxinit/v1/jaxinit.proto: no codegen.

import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { xxhash128 } from "hash-wasm";

const HERE = dirname(fileURLToPath(import.meta.url));
const PROTO_ROOT = join(HERE, "..", "..", "proto");
const PROTO_FILE = "jaxinit/v1/jaxinit.proto";
const DEADLINE_MS = 300_000;

const USAGE = "usage: node fetch.mjs <host:port> <initializer> <seed> <shape comma-separated> [dtype] <out-file>";

class CallFailed extends Error {} // a gRPC status or an `error` chunk: exit 3
class Corrupt extends Error {} // the answer is not a valid tensor: exit 4

function parseArgs(argv) {
  if (argv.length !== 5 && argv.length !== 6) throw new RangeError(USAGE);
  const [address, initializer, seed, shape] = argv;
  const dtype = argv.length === 6 ? argv[4] : "";
  const out = argv[argv.length - 1];
  // protobufjs would wrap an out-of-range 64-bit decimal string silently (and read "abc" as 0).
  if (!/^-?\d+$/.test(seed) || BigInt(seed) < -(2n ** 63n) || BigInt(seed) >= 2n ** 63n) {
    throw new RangeError(`seed must be an integer in [-2^63, 2^63), got ${JSON.stringify(seed)}`);
  }
  const dims = shape.trim() === "" ? [] : shape.split(",").map((d) => d.trim());
  for (const d of dims) {
    if (!/^\d+$/.test(d) || BigInt(d) >= 2n ** 63n) {
      throw new RangeError(`shape must be comma-separated non-negative integers, got ${JSON.stringify(shape)}`);
    }
  }
  return { address, initializer, seed, dims, dtype, out };
}

function loadService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto: total_bytes, request_digest
    longs: String, // (u)int64 arrive as decimal strings: no precision lost past 2^53
    enums: String,
    defaults: true, // zero values present (DataChunk.offset 0), not undefined
    oneofs: true, // chunk.payload names the field that is set: "header", "data", ...
  });
  return grpc.loadPackageDefinition(definition).jaxinit.v1.Initializers;
}

function connect(Initializers, address) {
  if (address.startsWith("grpcs://")) {
    return new Initializers(address.slice("grpcs://".length), grpc.credentials.createSsl());
  }
  return new Initializers(address.replace(/^grpc:\/\//, ""), grpc.credentials.createInsecure());
}

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// Calls Generate and resolves to {header, bytes, digest}, every check passed.
function generate(client, request) {
  return new Promise((resolve, reject) => {
    let header = null;
    let bytes = null;
    let received = 0;
    let digest = null;
    let failure = null;
    const call = client.generate(request, { deadline: Date.now() + DEADLINE_MS });
    const fail = (error) => {
      if (!failure) {
        failure = error;
        call.cancel(); // ends the stream: "error" (CANCELLED) then "end" follow, or nothing
        reject(error);
      }
    };
    call.on("data", (chunk) => {
      if (failure) return;
      switch (chunk.payload) {
        case "header": {
          if (header) return fail(new Corrupt("a second header in one answer"));
          header = chunk.header;
          if (header.byte_order !== "little") return fail(new Corrupt(`byte order ${header.byte_order}`));
          if (header.digest_algorithm !== "xxh3-128") {
            return fail(new Corrupt(`digest algorithm ${JSON.stringify(header.digest_algorithm)}, not "xxh3-128"`));
          }
          const total = Number(header.total_bytes);
          if (!Number.isSafeInteger(total) || total > 2 ** 31) {
            return fail(new Corrupt(`total_bytes ${header.total_bytes} is too large for this example`));
          }
          bytes = Buffer.alloc(total);
          return;
        }
        case "data": {
          if (!header) return fail(new Corrupt("data before the header"));
          if (digest) return fail(new Corrupt("data after the digest"));
          const { offset, data } = chunk.data;
          if (Number(offset) !== received) return fail(new Corrupt(`chunk at offset ${offset}, expected ${received}`));
          if (received + data.length > bytes.length) {
            return fail(new Corrupt(`more than total_bytes ${bytes.length} bytes`));
          }
          data.copy(bytes, received);
          received += data.length;
          return;
        }
        case "digest": {
          if (!header) return fail(new Corrupt("a digest before the header"));
          if (digest) return fail(new Corrupt("a second digest"));
          digest = chunk.digest;
          return;
        }
        case "error": {
          const { code, type, message } = chunk.error;
          return fail(new CallFailed(`server error ${code} (${type}): ${message}`));
        }
        default:
          return fail(new Corrupt(`unexpected chunk ${JSON.stringify(chunk.payload)}`));
      }
    });
    call.on("error", (error) => {
      const name = STATUS_NAMES[error.code] ?? error.code;
      fail(new CallFailed(`gRPC status ${name}: ${error.details || error.message}`));
    });
    call.on("end", () => {
      if (failure) return;
      if (!header) return fail(new Corrupt("the stream ended without a header"));
      if (received !== bytes.length) {
        return fail(new Corrupt(`received ${received} bytes, header.total_bytes is ${bytes.length}`));
      }
      if (!digest) return fail(new Corrupt("the stream ended without the digest"));
      resolve({ header, bytes, digest });
    });
  });
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(error.message);
    return 2;
  }
  const client = connect(loadService(), args.address);
  const request = {
    initializer: args.initializer,
    key: { seed: args.seed }, // sint64: a decimal string is accepted, any size
    shape: args.dims,
    dtype: args.dtype,
  };
  try {
    const { header, bytes, digest } = await generate(client, request);
    if (digest.algorithm !== "xxh3-128") throw new Corrupt(`digest algorithm ${digest.algorithm}`);
    const expected = Buffer.from(digest.digest).toString("hex");
    const actual = await xxhash128(bytes); // XXH3-128, canonical (big-endian) hex
    if (actual !== expected) {
      throw new Corrupt(`digest mismatch: the bytes hash to xxh3-128 ${actual}, the server sent ${expected}`);
    }
    writeFileSync(args.out, bytes);
    const summary = {
      shape: header.shape.map(Number),
      dtype: header.dtype,
      bytes: bytes.length,
      digest: actual,
      request_digest: header.provenance?.request_digest ?? null,
    };
    console.log(JSON.stringify(summary));
    return 0;
  } catch (error) {
    if (error instanceof CallFailed) {
      console.error(`error: ${error.message}`);
      return 3;
    }
    if (error instanceof Corrupt) {
      console.error(`integrity: ${error.message}`);
      return 4;
    }
    throw error;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
