import { randomUUID } from "node:crypto";
import {
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { BootExited, bootOnFreePorts, type PortSource } from "./free-port.ts";

/** The repository's proxy configuration, the file docker-compose.yml mounts. */
export const NGINX_CONF = resolve(import.meta.dir, "../../deploy/nginx/clearbox.conf");

/** Debian's nginx binary (in /usr/sbin, which a non-root PATH may lack), or null when not installed. */
export function findNginx(): string | null {
  return Bun.which("nginx") ?? (existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : null);
}

/** What a test deployment replaces in deploy/nginx/clearbox.conf; everything else runs as written. */
export interface ProxySite {
  /** host:port of each node's public listener, in place of the file's clearbox-1:8080 and clearbox-2:8080. */
  upstreams: [string, string];
  /** host:port the proxy listens on, in place of 443. */
  listen: string;
  certFile: string;
  keyFile: string;
  accessLog: string;
}

/** Replaces `pattern` exactly `count` times, so a change to the file that a test relies on fails loudly. */
function replaceExactly(
  text: string,
  pattern: RegExp,
  count: number,
  by: (match: string, index: number) => string,
) {
  let seen = 0;
  const result = text.replace(pattern, (match) => by(match, seen++));
  if (seen !== count)
    throw new Error(`${NGINX_CONF}: expected ${count} match(es) of ${pattern}, found ${seen}`);
  return result;
}

/** deploy/nginx/clearbox.conf with only its deployment-specific lines changed for `site`. */
export function localiseConfig(text: string, site: ProxySite): string {
  let conf = replaceExactly(text, /server clearbox-[12]:8080/g, 2, (_, i) => `server ${site.upstreams[i]}`);
  conf = replaceExactly(conf, /listen 443 ssl;/g, 1, () => `listen ${site.listen} ssl;`);
  conf = replaceExactly(conf, /\/etc\/nginx\/tls\/fullchain\.pem/g, 1, () => site.certFile);
  conf = replaceExactly(conf, /\/etc\/nginx\/tls\/privkey\.pem/g, 1, () => site.keyFile);
  return replaceExactly(conf, /\/var\/log\/nginx\/access\.log/g, 1, () => site.accessLog);
}

/** An nginx master and worker of this test's own: own prefix, config, pid, logs and port. */
export interface TestProxy {
  /** https://127.0.0.1:<port> */
  url: string;
  port: number;
  accessLog(): string;
  errorLog(): string;
  stop(): Promise<void>;
}

const NOBODY = 65534;

/**
 * Starts Debian's nginx in front of `upstreams` with the repository's configuration, on a free
 * port of 127.0.0.1, in the foreground (`daemon off`) so the test owns the process. When the test
 * runs as root, nginx runs as `nobody` (setpriv), so it never has more rights than a user's nginx.
 * Never the system service: its own prefix, pid file, logs and temp paths in a temporary directory.
 * The port is chosen free a moment before nginx binds it: an nginx that cannot bind it (taken
 * meanwhile: "Address already in use") is replaced by one on a fresh port (`bootOnFreePorts`), and
 * a boot counts only when the answer to its health check is in this nginx's own access log, never
 * another server's on the port. `ports` is where ports come from (default `freePort`; tests hand
 * out a taken one first). Rejects when nginx exits for another reason or does not answer in 10 s.
 */
export async function startNginx(options: {
  nginx: string;
  upstreams: [string, string];
  certFile: string;
  keyFile: string;
  /** PEM CA to trust when waiting for the proxy to answer. */
  ca: string;
  ports?: PortSource;
}): Promise<TestProxy> {
  return bootOnFreePorts(async (ports) => bootNginx(options, await ports()), options.ports);
}

/** One nginx on `port`: throws `BootExited` when it exits because the port is taken. */
async function bootNginx(
  options: { nginx: string; upstreams: [string, string]; certFile: string; keyFile: string; ca: string },
  port: number,
): Promise<TestProxy> {
  const dir = mkdtempSync(join(tmpdir(), "clearbox-nginx-"));
  for (const temp of ["body", "proxy", "fastcgi", "uwsgi", "scgi"])
    mkdirSync(join(dir, "temp", temp), { recursive: true });
  copyFileSync(options.certFile, join(dir, "cert.pem"));
  copyFileSync(options.keyFile, join(dir, "key.pem"));
  writeFileSync(
    join(dir, "clearbox.conf"),
    localiseConfig(readFileSync(NGINX_CONF, "utf8"), {
      upstreams: options.upstreams,
      listen: `127.0.0.1:${port}`,
      certFile: join(dir, "cert.pem"),
      keyFile: join(dir, "key.pem"),
      accessLog: join(dir, "access.log"),
    }),
  );
  const temp = (kind: string) =>
    `${kind}_temp_path ${join(dir, "temp", kind === "client_body" ? "body" : kind)};`;
  writeFileSync(
    join(dir, "nginx.conf"),
    [
      "worker_processes 1;",
      `pid ${join(dir, "nginx.pid")};`,
      `error_log ${join(dir, "error.log")} info;`,
      "events { worker_connections 256; }",
      "http {",
      ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map(temp),
      `  include ${join(dir, "clearbox.conf")};`,
      "}",
      "",
    ].join("\n"),
  );
  const root = process.getuid?.() === 0;
  if (root) {
    for (const path of [
      dir,
      ...["cert.pem", "key.pem", "clearbox.conf", "nginx.conf", "temp"].map((f) => join(dir, f)),
    ])
      chownSync(path, NOBODY, NOBODY);
    for (const temp of ["body", "proxy", "fastcgi", "uwsgi", "scgi"])
      chownSync(join(dir, "temp", temp), NOBODY, NOBODY);
  }
  const command = [options.nginx, "-p", dir, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log")];
  const asNobody = ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "--"];
  const proc: Subprocess = Bun.spawn([...(root ? asNobody : []), ...command, "-g", "daemon off;"], {
    stdout: "ignore",
    stderr: "pipe",
  });
  const errorLog = () =>
    existsSync(join(dir, "error.log")) ? readFileSync(join(dir, "error.log"), "utf8") : "";
  const accessLog = () =>
    existsSync(join(dir, "access.log")) ? readFileSync(join(dir, "access.log"), "utf8") : "";
  const url = `https://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  // Not UUID-shaped: clearbox.conf logs a UUID in a path as ":id".
  const marker = randomUUID().replaceAll("-", "");
  for (let probe = 0; ; probe++) {
    if (proc.exitCode !== null) {
      const stderr = await new Response(proc.stderr as ReadableStream).text();
      rmSync(dir, { recursive: true, force: true });
      const message = `nginx exited with ${proc.exitCode}: ${stderr}`;
      throw /Address already in use/.test(stderr) ? new BootExited(message) : new Error(message);
    }
    // A path of its own, so the access log shows this nginx answered it (clearbox.conf logs each
    // request's path at once, no buffer; any answer counts, a 404 from the upstreams included); a
    // server holding the port that never answers is given up on after a second.
    const path = `/test-nginx-boot/${marker}/${probe}`;
    const answered = await fetch(`${url}${path}`, {
      tls: { ca: options.ca },
      signal: AbortSignal.timeout(1_000),
    }).then(
      () => true,
      () => false,
    );
    if (answered && accessLog().includes(`GET ${path} `)) break;
    if (Date.now() > deadline) {
      const message = `nginx did not answer on ${url}: ${errorLog()}`;
      proc.kill("SIGKILL");
      await proc.exited;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(message);
    }
    await Bun.sleep(50);
  }
  return {
    url,
    port,
    accessLog,
    errorLog,
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
