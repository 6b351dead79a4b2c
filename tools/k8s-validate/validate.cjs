// validate.cjs — offline checks of candex's Kubernetes manifests (deploy/k8s).
//
//   node validate.cjs DIR CANDEX_BIN
//
// 1. Every document of every DIR/*.yaml validates against the Kubernetes API
//    schemas of its apiVersion and kind (the kubernetes-models package: types,
//    required fields, enums, formats).
// 2. candex's own rules, which no schema knows:
//    - each StatefulSet and Deployment has a readiness probe on /readyz and a
//      liveness probe on /healthz at ports its container declares, a PodDisruptionBudget selecting its pods,
//      and a StatefulSet's serviceName is a headless Service selecting them;
//    - volumes, claims and ConfigMap keys that are referenced exist;
//    - every candex option in a container's arguments or in a config file of
//      the ConfigMap is one `candex <command> --help` lists;
//    - the shard groups' --shards are disjoint and cover every shard of each
//      collection the build Jobs make (--shards N of the train step);
//    - every `group = NAME=dns:HOST:PORT` of route.conf names a headless
//      Service HOST with that port;
//    - the encode Job is Indexed, with completions = --of = the train step's
//      --shards, and the three build steps share one work directory.
// With --selftest, each rule is also checked to refuse a broken copy of the
// manifests (so that the check itself cannot pass by doing nothing).
//
// Exit status: 0 all good, 1 a manifest is wrong (every problem printed), 2 usage.
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const YAML = require("yaml");

function fail(msg) {
  console.error(msg);
  process.exit(2);
}

function loadDocs(dir) {
  const docs = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
    const text = fs.readFileSync(path.join(dir, file), "utf8");
    for (const d of YAML.parseAllDocuments(text, { prettyErrors: true })) {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join("; ")}`);
      const obj = d.toJS();
      if (obj != null) docs.push({ file, obj });
    }
  }
  return docs;
}

// schemaProblems validates one object with the kubernetes-models class of its kind.
function schemaProblems(obj) {
  const group = obj.apiVersion && obj.apiVersion.includes("/") ? obj.apiVersion : `v1`;
  let Model;
  try {
    Model = require(`kubernetes-models/${group}/${obj.kind}`)[obj.kind];
  } catch (e) {
    return [`unknown apiVersion/kind ${obj.apiVersion}/${obj.kind}`];
  }
  try {
    new Model(obj).validate();
    return [];
  } catch (e) {
    return [e.message];
  }
}

const podSpecOf = (o) =>
  o.kind === "StatefulSet" || o.kind === "Deployment" || o.kind === "Job" ? o.spec?.template?.spec : undefined;
const podLabelsOf = (o) => o.spec?.template?.metadata?.labels ?? {};
const selects = (selector, labels) =>
  Object.entries(selector ?? {}).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

// candexArgs returns [command words..., options...] of a candex container, or null.
function candexArgs(c) {
  const argv = [...(c.command ?? []), ...(c.args ?? [])];
  if (argv.length === 0) return null;
  if (argv[0] === "candex") argv.shift();
  else if (c.command) return null; // something else runs
  return argv.map(String);
}

const helpCache = new Map();
function optionsOf(candex, cmd) {
  if (!helpCache.has(cmd)) {
    const text = execFileSync(candex, [cmd, "--help"], { encoding: "utf8" });
    helpCache.set(cmd, new Set([...text.matchAll(/--([a-z][a-z0-9-]*)/g)].map((m) => m[1])));
  }
  return helpCache.get(cmd);
}

function parseRanges(text) {
  const out = [];
  for (const part of text.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return null;
    const lo = Number(m[1]), hi = Number(m[2] ?? m[1]);
    if (hi < lo) return null;
    for (let s = lo; s <= hi; s++) out.push(s);
  }
  return out;
}

function confLines(text) {
  return text
    .split("\n")
    .map((l) => l.replace(/#.*/, "").trim())
    .filter((l) => l.length > 0)
    .map((l) => {
      const eq = l.indexOf("=");
      return eq < 0 ? { bad: l } : { name: l.slice(0, eq).trim(), value: l.slice(eq + 1).trim() };
    });
}

function optionValue(argv, name) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}

// check returns the list of problems found in docs.
function check(docs, candex) {
  const problems = [];
  const say = (file, o, msg) => problems.push(`${file}: ${o.kind} ${o.metadata?.name ?? "?"}: ${msg}`);
  const all = docs.map((d) => d.obj);
  const byKind = (k) => docs.filter((d) => d.obj.kind === k);

  for (const { file, obj } of docs) for (const p of schemaProblems(obj)) say(file, obj, `schema: ${p}`);

  const claims = new Set(byKind("PersistentVolumeClaim").map((d) => d.obj.metadata.name));
  const configMaps = new Map(byKind("ConfigMap").map((d) => [d.obj.metadata.name, d.obj.data ?? {}]));
  const services = byKind("Service").map((d) => d.obj);
  const pdbs = byKind("PodDisruptionBudget").map((d) => d.obj);

  for (const { file, obj } of docs) {
    const pod = podSpecOf(obj);
    if (!pod) continue;
    const labels = podLabelsOf(obj);
    const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
    for (const v of volumes.values()) {
      if (v.persistentVolumeClaim && !claims.has(v.persistentVolumeClaim.claimName))
        say(file, obj, `volume ${v.name}: no PersistentVolumeClaim ${v.persistentVolumeClaim.claimName}`);
      if (v.configMap) {
        const data = configMaps.get(v.configMap.name);
        if (!data) say(file, obj, `volume ${v.name}: no ConfigMap ${v.configMap.name}`);
        for (const it of v.configMap.items ?? [])
          if (data && !(it.key in data)) say(file, obj, `volume ${v.name}: ConfigMap has no key ${it.key}`);
      }
    }
    for (const c of pod.containers ?? []) {
      for (const m of c.volumeMounts ?? [])
        if (!volumes.has(m.name)) say(file, obj, `container ${c.name} mounts ${m.name}, which the pod does not have`);
      if (obj.kind !== "Job") {
        const ports = new Set((c.ports ?? []).flatMap((p) => [p.name, p.containerPort]));
        for (const [kind, want] of [["readinessProbe", "/readyz"], ["livenessProbe", "/healthz"]]) {
          const probe = c[kind]?.httpGet;
          if (!probe || probe.path !== want) say(file, obj, `container ${c.name}: no ${kind} on ${want}`);
          else if (!ports.has(probe.port)) say(file, obj, `container ${c.name}: ${kind} port ${probe.port} not declared`);
        }
      }
      const argv = candexArgs(c);
      if (!argv) continue;
      const cmd = argv[0];
      for (const a of argv.filter((x) => x.startsWith("--"))) {
        const name = a.slice(2).split("=")[0];
        if (!optionsOf(candex, cmd).has(name)) say(file, obj, `candex ${cmd}: unknown option --${name}`);
      }
      const config = optionValue(argv, "config");
      if (config) {
        const mount = (c.volumeMounts ?? []).find((m) => config.startsWith(m.mountPath + "/"));
        const vol = mount && volumes.get(mount.name);
        const data = vol?.configMap && configMaps.get(vol.configMap.name);
        const key = mount && config.slice(mount.mountPath.length + 1);
        if (!data || !(key in data)) say(file, obj, `candex ${cmd} --config ${config}: not in a mounted ConfigMap`);
        else
          for (const l of confLines(data[key])) {
            if (l.bad) say(file, obj, `${key}: '${l.bad}' is not 'option = value'`);
            else if (!optionsOf(candex, cmd).has(l.name)) say(file, obj, `${key}: candex ${cmd} has no option ${l.name}`);
          }
      }
    }
    if (obj.kind === "StatefulSet" || obj.kind === "Deployment") {
      if (!pdbs.some((p) => selects(p.spec?.selector?.matchLabels, labels)))
        say(file, obj, "no PodDisruptionBudget selects its pods");
      if (!selects(obj.spec?.selector?.matchLabels, labels)) say(file, obj, "its selector does not match its pod labels");
    }
    if (obj.kind === "StatefulSet") {
      const svc = services.find((s) => s.metadata.name === obj.spec.serviceName);
      if (!svc || svc.spec?.clusterIP !== "None" || !selects(svc.spec?.selector, labels))
        say(file, obj, `serviceName ${obj.spec.serviceName} is not a headless Service selecting its pods`);
    }
  }

  // shard groups against the build: --shards of the train step per collection
  const jobs = byKind("Job");
  const argvOf = (o) => candexArgs((podSpecOf(o)?.containers ?? [])[0] ?? {}) ?? [];
  const shardsOf = new Map(); // collection -> shard count
  const workOf = new Map(); // step -> work dir
  for (const { file, obj } of jobs) {
    const argv = argvOf(obj);
    if (argv[0] !== "build") continue;
    workOf.set(`${file}:${argv[1]}`, optionValue(argv, "work"));
    if (argv[1] === "train") shardsOf.set(optionValue(argv, "collection"), Number(optionValue(argv, "shards") ?? 1));
  }
  const works = new Set(workOf.values());
  if (works.size > 1) problems.push(`build Jobs: the steps use different work directories: ${[...works].join(", ")}`);
  for (const { file, obj } of jobs) {
    const argv = argvOf(obj);
    if (argv[0] !== "build" || argv[1] !== "encode") continue;
    const of = Number(optionValue(argv, "of"));
    const want = [...shardsOf.values()][0];
    if (obj.spec.completionMode !== "Indexed") say(file, obj, "the encode step is not an Indexed Job");
    if (obj.spec.completions !== of || of !== want)
      say(file, obj, `completions ${obj.spec.completions}, --of ${of} and the train step's --shards ${want} differ`);
  }
  const served = new Map(); // collection -> shard -> group
  for (const { file, obj } of byKind("StatefulSet")) {
    const argv = argvOf(obj);
    if (argv[0] !== "serve") continue;
    const spec = optionValue(argv, "shards") ?? "all";
    const entries = spec.split(";").map((e) => e.trim());
    for (const coll of shardsOf.keys()) {
      const own = entries.find((e) => e.startsWith(coll + ":"));
      const list = own ? own.slice(coll.length + 1) : entries.find((e) => !e.includes(":")) ?? "all";
      if (list === "none") continue;
      const n = shardsOf.get(coll);
      const shards = list === "all" ? [...Array(n).keys()] : parseRanges(list);
      if (!shards) {
        say(file, obj, `--shards '${spec}': '${list}' is not a shard list`);
        continue;
      }
      if (!served.has(coll)) served.set(coll, new Map());
      for (const s of shards) {
        if (s >= n) say(file, obj, `--shards '${spec}': ${coll} has ${n} shards, not ${s + 1}`);
        else if (served.get(coll).has(s)) say(file, obj, `--shards: ${coll} shard ${s} is also served by ${served.get(coll).get(s)}`);
        else served.get(coll).set(s, obj.metadata.name);
      }
    }
  }
  for (const [coll, n] of shardsOf)
    for (let s = 0; s < n; s++)
      if (!served.get(coll)?.has(s)) problems.push(`shard groups: no StatefulSet serves shard ${s} of ${coll}`);

  // the router's groups against the headless Services
  for (const [name, data] of configMaps) {
    if (!("route.conf" in data)) continue;
    for (const l of confLines(data["route.conf"])) {
      if (l.name !== "group") continue;
      const m = /^([^=]+)=dns:([^:]+):(\d+)$/.exec(l.value);
      if (!m) continue; // a static list of URLs
      const svc = services.find((s) => s.metadata.name === m[2]);
      if (!svc || svc.spec?.clusterIP !== "None")
        problems.push(`ConfigMap ${name}: route.conf group ${m[1]}: no headless Service ${m[2]}`);
      else if (!(svc.spec.ports ?? []).some((p) => p.port === Number(m[3])))
        problems.push(`ConfigMap ${name}: route.conf group ${m[1]}: Service ${m[2]} has no port ${m[3]}`);
    }
  }
  return problems;
}

// selftest breaks one rule at a time in a copy of the manifests: each copy
// must be refused, else the check would let that mistake through.
function selftest(docs, candex) {
  const find = (kind, pred = () => true) => docs.find((d) => d.obj.kind === kind && pred(d.obj)).obj;
  const breakers = {
    "a field of the wrong type": () => (find("StatefulSet").spec.replicas = "two"),
    "a missing required field": () => delete find("Deployment").spec.selector,
    "no readiness probe": () => delete find("StatefulSet").spec.template.spec.containers[0].readinessProbe,
    "no PodDisruptionBudget": () => {
      const i = docs.findIndex((d) => d.obj.kind === "PodDisruptionBudget");
      docs.splice(i, 1);
    },
    "overlapping shards": () => {
      const a = find("StatefulSet").spec.template.spec.containers[0].args;
      a[a.indexOf("--shards") + 1] = "tracks:0-8;podcasts:all";
    },
    "a missing shard": () => {
      const a = find("StatefulSet").spec.template.spec.containers[0].args;
      a[a.indexOf("--shards") + 1] = "tracks:0-6;podcasts:all";
    },
    "an unknown candex option": () => find("Deployment").spec.template.spec.containers[0].args.push("--no-such-option", "1"),
    "an unknown config file option": () => (find("ConfigMap").data["serve.conf"] += "keep-previus = 3\n"),
    "a router group without its Service": () => (find("ConfigMap").data["route.conf"] += "group = g9=dns:candex-g9:7700\n"),
    "an encode Job that is not Indexed": () => delete find("Job", (o) => o.spec.completionMode).spec.completionMode,
    "a missing claim": () => (find("StatefulSet").spec.template.spec.volumes[0].persistentVolumeClaim.claimName = "nope"),
  };
  let bad = 0;
  for (const [what, breakIt] of Object.entries(breakers)) {
    const copy = structuredClone(docs);
    const saved = docs.splice(0, docs.length, ...copy);
    breakIt();
    const problems = check(docs, candex);
    docs.splice(0, docs.length, ...saved);
    if (problems.length === 0) {
      console.error(`selftest: ${what} was not refused`);
      bad++;
    } else {
      console.log(`selftest: ${what}: refused (${problems[0]})`);
    }
  }
  return bad;
}

function main() {
  const args = process.argv.slice(2);
  const self = args.includes("--selftest");
  const [dir, candex] = args.filter((a) => a !== "--selftest");
  if (!dir || !candex) fail("usage: node validate.cjs DIR CANDEX_BIN [--selftest]");
  let docs;
  try {
    docs = loadDocs(dir);
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
  const problems = check(docs, candex);
  for (const p of problems) console.error(p);
  const kinds = docs.map((d) => d.obj.kind).reduce((m, k) => ((m[k] = (m[k] ?? 0) + 1), m), {});
  console.log(`${docs.length} manifests (${Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ")}): ` +
    `${problems.length === 0 ? "valid" : `${problems.length} problem(s)`}`);
  const selfBad = self && problems.length === 0 ? selftest(docs, candex) : 0;
  process.exit(problems.length > 0 || selfBad > 0 ? 1 : 0);
}

main();
