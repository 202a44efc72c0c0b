/**
 * Whether a terminal acts on this UTF-16 code unit instead of showing it: C0 controls except TAB
 * (ESC starts CSI and OSC sequences such as OSC 52 clipboard writes and OSC 8 links, CR and BS
 * overwrite what is on the line, LF starts a line that can pose as another sender's, BEL rings),
 * DEL, the C1 controls (U+0080–U+009F: 8-bit CSI, OSC, ST), the line and paragraph separators, and
 * the Unicode bidirectional formatting characters (U+061C, U+200E–U+200F, U+202A–U+202E,
 * U+2066–U+2069), which reorder what is shown ("Trojan Source", CVE-2021-42574).
 */
function active(code: number): boolean {
  return (
    (code < 0x20 && code !== 0x09) ||
    (code >= 0x7f && code <= 0x9f) ||
    code === 0x061c ||
    code === 0x200e ||
    code === 0x200f ||
    (code >= 0x2028 && code <= 0x202e) ||
    (code >= 0x2066 && code <= 0x2069)
  );
}

const NAMED: Record<number, string> = { 10: "\\n", 13: "\\r", 8: "\\b", 12: "\\f", 11: "\\v" };

/**
 * `text` as a terminal may print it: every character a terminal would act on (see `active`) is
 * replaced by its visible escape — `\n`, `\r`, `\b`, `\f`, `\v`, `\xHH` below U+0100, else
 * `\u{HHHH}` — and everything else, a backslash included, is left as it is (so applying it twice
 * changes nothing more). Use it for everything the CLI prints that another user, the server or the
 * network chose: decrypted message text, usernames, group and device names, reasons and error
 * messages. What the CLI itself writes (its prompt, its own escape to redraw the line) does not go
 * through it.
 */
export function printable(text: string): string {
  let out = "";
  let from = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (!active(code)) continue;
    out += text.slice(from, i);
    out +=
      NAMED[code] ??
      (code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`);
    from = i + 1;
  }
  return from === 0 ? text : out + text.slice(from);
}
