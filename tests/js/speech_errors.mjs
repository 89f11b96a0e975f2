// Calls /v1/audio/speech with the official openai npm package, as a JavaScript user would,
// and prints what that user sees of each refusal: one JSON line per request.
// Usage: node speech_errors.mjs <base URL ending in /v1> '<JSON list of request bodies>'
import OpenAI from "openai";

const [baseURL, requests] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
for (const body of JSON.parse(requests)) {
  try {
    const response = await client.audio.speech.create(body);
    const bytes = (await response.arrayBuffer()).byteLength;
    console.log(JSON.stringify({ ok: true, bytes }));
  } catch (error) {
    console.log(
      JSON.stringify({
        ok: false,
        class: error.constructor.name,
        status: error.status,
        message: error.message,
        param: error.param,
        code: error.code,
        type: error.type,
      }),
    );
  }
}
