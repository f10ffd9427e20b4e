#!/usr/bin/env node
// Download one URL through transferd and follow its progress: the Node.js twin of
// examples/python/client.py, with the same flags (TLS and token), output and exit status.
//
// 1. CreateDownload queues the download; it returns once the download is durably stored.
// 2. WatchDownload streams its progress: the current state first, then every status change and
//    byte progress, ending after a terminal status (COMPLETED, CANCELED or ERROR).
// 3. GetDownload fetches the final operation, including the error when the download failed.
//
// The service definition is loaded at run time from the repository's proto/ directory with
// @grpc/proto-loader, so no generated code is committed.
//
//   npm ci --prefix examples/node
//   node examples/node/client.js --server 127.0.0.1:50051 https://example.com/file.bin
//
// It prints one line per progress message, e.g.
//   status=RUNNING bytes=1048576/4194304 response_changed=true restarted=false
// and finally `result_file=file.bin status=COMPLETED`. Exit status 0 when the download
// completed, 1 otherwise, 2 for a wrong command line. Ctrl-C does not cancel the download: it
// keeps running in the server.
//
// TLS: --ca-cert (TRANSFERD_CA_CERT) speaks TLS trusting that CA; --client-cert/--client-key
// (TRANSFERD_CLIENT_CERT/TRANSFERD_CLIENT_KEY) for mutual TLS; --server-name
// (TRANSFERD_SERVER_NAME) when the certificate names another host. --token (TRANSFERD_TOKEN)
// sends `authorization: Bearer TOKEN`, for a server with --auth-tokens.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** The contract, relative to the proto root. */
const PROTO_FILE = 'backgroundtransfer/v1/backgroundtransfer.proto';
/** The proto root of this repository (examples/node/client.js -> proto/). */
const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
/** Prefix of the BackgroundTransferStatus value names, left out when printing. */
const STATUS_PREFIX = 'BACKGROUND_TRANSFER_STATUS_';

const USAGE = `usage: client.js [options] URL

Download a URL through transferd and print its progress.

  --server HOST:PORT       transferd address (default: 127.0.0.1:50051)
  --result-file NAME       result path, relative to the server's download directory
                           (default: the server picks a name from the URL)
  --connect-timeout SECS   wait this long for the connection (default: 10)
  --rpc-timeout SECS       deadline of each unary call (default: 30)
  --timeout SECS           give up watching after this long; the download goes on
  --proto-dir DIR          root of the .proto files (default: the repository's proto/)
  --token TOKEN            bearer token (env TRANSFERD_TOKEN; prefer the variable)
  --ca-cert FILE           TLS, trusting this CA (env TRANSFERD_CA_CERT; default: plaintext)
  --client-cert FILE       client certificate for mutual TLS (env TRANSFERD_CLIENT_CERT)
  --client-key FILE        its private key (env TRANSFERD_CLIENT_KEY)
  --server-name NAME       name the server's certificate must carry (env TRANSFERD_SERVER_NAME)
`;

/** Exits 2 with `message` and the usage, like argparse. */
function usageError(message) {
  process.stderr.write(`${USAGE}\nclient.js: error: ${message}\n`);
  process.exit(2);
}

/** The command line, with environment variables as defaults. */
function parseCommandLine(argv) {
  const env = process.env;
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        server: { type: 'string', default: '127.0.0.1:50051' },
        'result-file': { type: 'string', default: '' },
        'connect-timeout': { type: 'string', default: '10' },
        'rpc-timeout': { type: 'string', default: '30' },
        timeout: { type: 'string' },
        'proto-dir': { type: 'string', default: DEFAULT_PROTO_DIR },
        token: { type: 'string', default: env.TRANSFERD_TOKEN },
        'ca-cert': { type: 'string', default: env.TRANSFERD_CA_CERT },
        'client-cert': { type: 'string', default: env.TRANSFERD_CLIENT_CERT },
        'client-key': { type: 'string', default: env.TRANSFERD_CLIENT_KEY },
        'server-name': { type: 'string', default: env.TRANSFERD_SERVER_NAME },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    usageError(e.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  if (positionals.length !== 1) usageError('give exactly one URL');
  if (!values['client-cert'] !== !values['client-key']) {
    usageError('--client-cert and --client-key go together');
  }
  if ((values['client-cert'] || values['server-name']) && !values['ca-cert']) {
    usageError('--client-cert and --server-name need --ca-cert');
  }
  const seconds = (name) => {
    const value = Number(values[name]);
    if (!(value > 0)) usageError(`--${name} must be a positive number of seconds`);
    return value;
  };
  return {
    url: positionals[0],
    server: values.server,
    resultFile: values['result-file'],
    connectTimeout: seconds('connect-timeout'),
    rpcTimeout: seconds('rpc-timeout'),
    timeout: values.timeout === undefined ? undefined : seconds('timeout'),
    protoDir: values['proto-dir'],
    token: values.token,
    caCert: values['ca-cert'],
    clientCert: values['client-cert'],
    clientKey: values['client-key'],
    serverName: values['server-name'],
  };
}

/** The package `backgroundtransfer.v1`, loaded from the .proto files. */
function loadContract(protoDir) {
  const definition = protoLoader.loadSync(path.join(protoDir, PROTO_FILE), {
    includeDirs: [protoDir],
    // Field names as in the .proto (snake case), enums as their names, 64-bit numbers as JS numbers (byte counts stay far below 2^53),
    // and fields left at their defaults present, as Python's generated messages behave.
    keepCase: true,
    enums: String,
    longs: Number,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).backgroundtransfer.v1;
}

/** Credentials for args: TLS when a CA file is given (plus a bearer token when one is). */
function credentials(args) {
  if (!args.caCert) {
    if (args.token) {
      // grpc-js sends call credentials only over TLS; plaintext gets the header per call.
      return { channel: grpc.credentials.createInsecure(), metadata: bearer(args.token) };
    }
    return { channel: grpc.credentials.createInsecure(), metadata: new grpc.Metadata() };
  }
  const read = (file) => (file ? fs.readFileSync(file) : null);
  let channel = grpc.credentials.createSsl(
    read(args.caCert),
    read(args.clientKey),
    read(args.clientCert),
  );
  if (args.token) {
    const token = grpc.credentials.createFromMetadataGenerator((_, done) =>
      done(null, bearer(args.token)),
    );
    channel = grpc.credentials.combineChannelCredentials(channel, token);
  }
  return { channel, metadata: new grpc.Metadata() };
}

function bearer(token) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** The short name of a BackgroundTransferStatus, e.g. `RUNNING`. */
function statusName(status) {
  return String(status).replace(STATUS_PREFIX, '');
}

/** One BackgroundDownloadProgress message as a single line. */
function formatProgress(p) {
  return (
    `status=${statusName(p.status)}` +
    ` bytes=${p.bytes_received}/${p.total_bytes_to_receive}` +
    ` response_changed=${p.has_response_changed}` +
    ` restarted=${p.has_restarted}`
  );
}

/** A unary call as a promise, with the per-call deadline. */
function unary(client, method, request, metadata, seconds) {
  const deadline = new Date(Date.now() + seconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

/** Prints every progress message until the stream ends after a terminal status. */
function watch(client, guid, metadata, seconds) {
  const options = seconds === undefined ? {} : { deadline: new Date(Date.now() + seconds * 1000) };
  const stream = client.WatchDownload({ guid }, metadata, options);
  return new Promise((resolve, reject) => {
    stream.on('data', (progress) => console.log(formatProgress(progress)));
    stream.on('error', reject);
    stream.on('end', resolve);
  });
}

async function main() {
  const args = parseCommandLine(process.argv.slice(2));
  const v1 = loadContract(args.protoDir);
  const { channel, metadata } = credentials(args);
  const options = {};
  if (args.serverName) options['grpc.ssl_target_name_override'] = args.serverName;
  const client = new v1.BackgroundTransferService(args.server, channel, options);
  await new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + args.connectTimeout * 1000), (err) =>
      err ? reject(new Error(`cannot connect to ${args.server}: ${err.message}`)) : resolve(),
    ),
  );

  let operation = await unary(
    client,
    'CreateDownload',
    { requested_uri: args.url, result_file: args.resultFile },
    metadata,
    args.rpcTimeout,
  );
  console.log(`created guid=${operation.guid} result_file=${operation.result_file}`);
  await watch(client, operation.guid, metadata, args.timeout);

  // The stored operation is the authority on the outcome, and carries the error if any.
  operation = await unary(client, 'GetDownload', { guid: operation.guid }, metadata, args.rpcTimeout);
  const status = statusName(operation.progress.status);
  console.log(`result_file=${operation.result_file} status=${status}`);
  if (status === 'ERROR') console.error(`error: ${operation.error.message}`);
  client.close();
  return status === 'COMPLETED' ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    // A gRPC error names its code; anything else (a file not found, no connection) its message.
    const code = err.code === undefined ? '' : ` (${grpc.status[err.code]})`;
    console.error(`error${code}: ${err.details || err.message}`);
    process.exitCode = 1;
  },
);
