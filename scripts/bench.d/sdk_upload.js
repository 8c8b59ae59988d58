// Peer of `tl-ingest upload` in the wire benchmark: the official TwelveLabs JS
// SDK (npm `twelvelabs-js`) uploading files with
// `client.assets.create({method: "direct", file})`, CONCURRENCY at a time, as a
// user of the SDK would write it.
//
// Run by scripts/bench with node, NODE_PATH pointing at the SDK's install:
//     sdk_upload.js BASE_URL API_KEY CONCURRENCY FILE...
// The SDK's client takes no base URL argument; it reads TWELVELABS_BASE_URL
// (BASE_URL includes the API version, like its default
// "https://api.twelvelabs.io/v1.3"), which this script sets.
// Prints one JSON object: import and upload times (s) and the asset ids.

"use strict";

const t0 = process.hrtime.bigint();
const fs = require("fs");
const seconds = (from) => Number(process.hrtime.bigint() - from) / 1e9;

async function main() {
    const [baseUrl, apiKey, concurrency, ...files] = process.argv.slice(2);
    process.env.TWELVELABS_BASE_URL = baseUrl;
    const { TwelveLabs } = require("twelvelabs-js");
    const importS = seconds(t0);
    const client = new TwelveLabs({ apiKey });
    const ids = new Array(files.length);
    let next = 0;
    const t1 = process.hrtime.bigint();
    async function worker() {
        while (next < files.length) {
            const i = next++;
            const asset = await client.assets.create(
                { method: "direct", file: fs.createReadStream(files[i]) },
                { timeoutInSeconds: 3600, maxRetries: 0 },
            );
            ids[i] = asset.id;
        }
    }
    await Promise.all(Array.from({ length: Number(concurrency) }, worker));
    console.log(JSON.stringify({ import_s: importS, upload_s: seconds(t1), ids }));
}

main().catch((error) => {
    console.error(error);
    process.exit(1);
});
