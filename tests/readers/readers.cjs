// Node's ZIP readers, for the reader matrix (tests/readers/__init__.py).
// Usage: NODE_PATH=<cache>/node_modules node readers.cjs READER ARCHIVE
//   READER: yauzl2 | yauzl3 | node-stream-zip | unzipper-open | unzipper-parse (ARCHIVE "-": stdin)
// Prints one JSON array: [{"name", "size", "crc32", "sha256", "declared_size", "declared_crc32"}]
// where size/crc32/sha256 are computed over the bytes the reader returned and declared_* are what
// it reports for the entry (null when it does not know). Any error: message on stderr, exit 1.
'use strict';
const crypto = require('crypto');
const fs = require('fs');

const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

function crc32(buf, crc) {
  let c = ~crc;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// size, CRC-32 and SHA-256 of everything `stream` yields, checked to its end
function digest(stream) {
  return new Promise((resolve, reject) => {
    const sha = crypto.createHash('sha256');
    let crc = 0;
    let size = 0;
    stream.on('data', (chunk) => {
      sha.update(chunk);
      crc = crc32(chunk, crc);
      size += chunk.length;
    });
    stream.on('error', reject);
    stream.on('end', () => resolve({ size, crc32: crc, sha256: sha.digest('hex') }));
  });
}

const EMPTY = { size: 0, crc32: 0, sha256: crypto.createHash('sha256').digest('hex') };

function row(name, got, declaredSize, declaredCrc) {
  const known = (v) => (v === undefined || v === null ? null : Number(v));
  return { name, ...got, declared_size: known(declaredSize), declared_crc32: known(declaredCrc) };
}

function withYauzl(yauzl, file) {
  const options = { lazyEntries: true, autoClose: true, decodeStrings: true, validateEntrySizes: true };
  return new Promise((resolve, reject) => {
    yauzl.open(file, options, (err, zip) => {
      if (err) return reject(err);
      const out = [];
      zip.on('error', reject);
      zip.on('end', () => resolve(out));
      zip.on('entry', (entry) => {
        zip.openReadStream(entry, (err2, stream) => {
          if (err2) return reject(err2);
          digest(stream).then((got) => {
            out.push(row(entry.fileName, got, entry.uncompressedSize, entry.crc32));
            zip.readEntry();
          }, reject);
        });
      });
      zip.readEntry();
    });
  });
}

async function withNodeStreamZip(file) {
  const StreamZip = require('node-stream-zip');
  const zip = new StreamZip.async({ file, storeEntries: true });
  try {
    const out = [];
    for (const entry of Object.values(await zip.entries())) {
      // it refuses to stream a directory entry ("Entry is not file"): read as empty
      const got = entry.isDirectory ? EMPTY : await digest(await zip.stream(entry.name));
      out.push(row(entry.name, got, entry.size, entry.crc));
    }
    return out;
  } finally {
    await zip.close();
  }
}

async function withUnzipperOpen(file) {
  const unzipper = require('unzipper');
  const directory = await unzipper.Open.file(file);
  const out = [];
  for (const entry of directory.files) {
    const got = await digest(entry.stream());
    out.push(row(entry.path, got, entry.uncompressedSize, entry.crc32));
  }
  return out;
}

async function withUnzipperParse(file) {
  const unzipper = require('unzipper');
  const input = file === '-' ? process.stdin : fs.createReadStream(file);
  const parser = unzipper.Parse({ forceStream: true });
  input.on('error', (err) => parser.destroy(err));
  const out = [];
  for await (const entry of input.pipe(parser)) {
    const got = await digest(entry);
    // with a data descriptor (flag bit 3), the local header's size and CRC are zeros
    const known = !(entry.vars.flags & 0x08);
    out.push(row(entry.path, got, known ? entry.vars.uncompressedSize : null,
      known ? entry.vars.crc32 : null));
  }
  return out;
}

const READERS = {
  yauzl2: (file) => withYauzl(require('yauzl2'), file),
  yauzl3: (file) => withYauzl(require('yauzl3'), file),
  'node-stream-zip': withNodeStreamZip,
  'unzipper-open': withUnzipperOpen,
  'unzipper-parse': withUnzipperParse,
};

async function main() {
  const [reader, file] = process.argv.slice(2);
  if (!READERS[reader] || !file) {
    process.stderr.write(`usage: readers.cjs ${Object.keys(READERS).join('|')} ARCHIVE\n`);
    process.exit(2);
  }
  const out = await READERS[reader](file);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
