/**
 * The CLI's group labels (`groupLabel`, `pickGroup`) against names that look the same on a
 * terminal without being the same string: a zero-width character, a trailing space, a full-width
 * form. Such a group, made by anyone and joined by invitation, was shown as `#team` beside your own
 * `#team`, with no `~<id>` to tell them apart, so what it said passed for your team's. Pure
 * functions: no node or database.
 */
import { describe, expect, test } from "bun:test";
import { groupLabel, pickGroup } from "../../src/cli/chat.ts";

const ours = { groupId: "11111111-1111-4111-8111-111111111111", name: "team" };
const lookAlikes = [
  "team\u200b", // zero-width space
  "te\u200dam", // zero-width joiner
  "\ufeffteam", // byte order mark / zero-width no-break space
  "team\u00ad", // soft hyphen
  "team\u2060", // word joiner
  "team\u3164", // Hangul filler (drawn blank)
  "team ", // trailing space
  "team\u00a0", // no-break space
  "ｔｅａｍ", // full-width letters
  "TEAM",
];

describe("group names that a terminal shows alike", () => {
  for (const name of lookAlikes) {
    const theirs = { groupId: "22222222-2222-4222-8222-222222222222", name };
    const escaped = JSON.stringify(name);

    test(`${escaped} beside "team": both labelled with their id, the bare name refused`, () => {
      const groups = [ours, theirs];
      expect(groupLabel(ours, groups)).toBe("team~11111111");
      expect(groupLabel(theirs, groups)).toBe(`${name}~22222222`);
      const picked = pickGroup("team", groups);
      expect(Array.isArray(picked) ? picked.map((g) => g.groupId).sort() : picked).toEqual([
        ours.groupId,
        theirs.groupId,
      ]);
    });

    test(`${escaped}: its label typed as the screen shows it (team~22222222) picks that group`, () => {
      const groups = [ours, theirs];
      expect(pickGroup("team~22222222", groups)).toEqual(theirs);
      expect(pickGroup("#team~11111111", groups)).toEqual(ours);
    });
  }

  test("names that differ on screen keep their bare labels", () => {
    const groups = [ours, { groupId: "33333333-3333-4333-8333-333333333333", name: "teams" }];
    expect(groupLabel(ours, groups)).toBe("team");
    expect(pickGroup("team", groups)).toEqual(ours);
  });
});
