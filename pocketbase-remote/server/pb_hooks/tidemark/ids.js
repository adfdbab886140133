// tidemark server extension: the formats clients send, checked strictly before
// anything is stored or looked up. A change id is "<client>.<counter>": the client
// part a record id (15 chars [a-z0-9]), the counter a decimal u64 without leading
// zeros. A push tag is "<base>:<change id>", base a decimal u64 (0 = "must not
// exist"). Anything else is refused with a 400 that says what was expected.

const ID = /^[a-z0-9]{15}$/;
const U64 = "(0|[1-9][0-9]{0,19})";
const CID = new RegExp("^([a-z0-9]{15})\\." + U64 + "$");
const PUSH = new RegExp("^" + U64 + ":(([a-z0-9]{15})\\." + U64 + ")$");
const U64_MAX = "18446744073709551615";

function fitsU64(digits) {
  return digits.length < 20 || (digits.length === 20 && digits <= U64_MAX);
}

function isId(s) {
  return typeof s === "string" && ID.test(s);
}

// "<client>.<n>" -> {client, n} (n kept as its decimal string: exact beyond 2^53);
// null if s is not a well-formed change id.
function parseCid(s) {
  if (typeof s !== "string" || s.length > 36) return null;
  const m = CID.exec(s);
  if (!m || !fitsU64(m[2])) return null;
  return { client: m[1], n: m[2] };
}

// A stored change id (written by these hooks, or by an older version of them) ->
// {client, n}; null if there is none. Lenient, for reading only.
function storedCid(s) {
  if (!s) return null;
  const i = s.lastIndexOf(".");
  if (i <= 0) return null;
  const n = s.slice(i + 1);
  return /^[0-9]+$/.test(n) ? { client: s.slice(0, i), n: n.replace(/^0+(?=.)/, "") } : null;
}

function bad(message, field) {
  const data = {};
  data[field || "tm_push"] = new ValidationError("tm_invalid", message);
  return new BadRequestError(message, data);
}

const PUSH_HELP = 'expected "<base>:<client>.<counter>" (base and counter decimal u64, client 15 chars [a-z0-9])';

// "<base>:<change id>" -> {base, cid, client, n}; "" -> null; anything else throws
// a 400.
function parsePush(s) {
  if (!s) return null;
  if (typeof s !== "string" || s.length > 57) throw bad("tidemark: malformed push tag: " + PUSH_HELP);
  const m = PUSH.exec(s);
  if (!m || !fitsU64(m[1]) || !fitsU64(m[4])) throw bad("tidemark: malformed push tag: " + PUSH_HELP);
  return { base: Number(m[1]), cid: m[2], client: m[3], n: m[4] };
}

// The `tm` parameter of a batch sub-request's URL, exactly as PocketBase will read it
// (the first value), or "" if there is none. Refuses (throws) a URL where it is
// ambiguous: more than one tm, or a query PocketBase would parse differently.
const PLAIN_TM = /^tm=[0-9a-z:.]*$/;

function tmOfUrl(url) {
  const q = url.indexOf("?");
  if (q < 0) return "";
  const query = url.slice(q + 1);
  // What the tidemark client sends: nothing to decode.
  if (PLAIN_TM.test(query)) return query.slice(3);
  let found = null;
  for (const part of query.split("&")) {
    const eq = part.indexOf("=");
    let key;
    let value;
    try {
      key = decodeURIComponent((eq < 0 ? part : part.slice(0, eq)).replace(/\+/g, " "));
      value = eq < 0 ? "" : decodeURIComponent(part.slice(eq + 1).replace(/\+/g, " "));
    } catch (_) {
      if (part.indexOf("tm") >= 0) throw bad("tidemark: malformed query", "tm");
      continue;
    }
    if (key !== "tm") continue;
    if (found !== null || part.indexOf(";") >= 0) throw bad("tidemark: ambiguous tm parameter", "tm");
    found = value;
  }
  return found || "";
}

module.exports = { isId, parseCid, storedCid, parsePush, tmOfUrl, bad, PUSH_HELP };
