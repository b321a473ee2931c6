//! Process output as styled text: SGR colour sequences become ratatui styles; every other
//! escape or control sequence is dropped (a cursor move or a bell must never reach the
//! terminal the TUI draws on). A small parser of its own: output lines only ever need SGR.

use ratatui::style::{Color, Modifier, Style};

/// `text` as runs of (text, style), starting from `base`. Without `color`, the escapes
/// are removed and everything has the `base` style. Tabs become spaces (to the next
/// multiple of 8); a carriage return starts the line over, as on a terminal (progress
/// bars show their last state).
pub fn parse(text: &str, base: Style, color: bool) -> Vec<(String, Style)> {
    // A carriage return not at the end: what follows the last one is what a terminal shows.
    let text = match text.trim_end_matches('\r').rfind('\r') {
        Some(i) => &text[i + 1..],
        None => text,
    };
    let mut runs: Vec<(String, Style)> = Vec::new();
    let mut cur = String::new();
    let mut style = base;
    let mut col = 0usize;
    let mut chars = text.chars().peekable();
    let flush = |runs: &mut Vec<(String, Style)>, cur: &mut String, style: Style| {
        if !cur.is_empty() {
            runs.push((std::mem::take(cur), style));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    for d in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&d) {
                            fin = Some(d);
                            break;
                        }
                        params.push(d);
                    }
                    if fin == Some('m') && color {
                        flush(&mut runs, &mut cur, style);
                        style = sgr(style, base, &params);
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ESC \.
                    chars.next();
                    while let Some(d) = chars.next() {
                        if d == '\x07' {
                            break;
                        }
                        if d == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                Some(_) => {
                    // ESC, intermediates (` ` to `/`), a final character: `ESC ( B`.
                    for d in chars.by_ref() {
                        if !(' '..='/').contains(&d) {
                            break;
                        }
                    }
                }
                None => {}
            },
            '\t' => {
                let n = 8 - col % 8;
                cur.extend(std::iter::repeat_n(' ', n));
                col += n;
            }
            c if c.is_control() => {}
            c => {
                cur.push(c);
                col += 1;
            }
        }
    }
    flush(&mut runs, &mut cur, style);
    runs
}

/// The text without any escape sequence, as shown.
pub fn strip(text: &str) -> String {
    parse(text, Style::default(), false)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// Apply one SGR sequence's parameters (`1;31`, `38;5;208`, `` = reset).
fn sgr(mut style: Style, base: Style, params: &str) -> Style {
    let mut ps = params
        .split([';', ':'])
        .map(|p| p.parse::<u16>().unwrap_or(0));
    if params.is_empty() {
        return base;
    }
    while let Some(p) = ps.next() {
        style = match p {
            0 => base,
            1 => style.add_modifier(Modifier::BOLD),
            2 => style.add_modifier(Modifier::DIM),
            3 => style.add_modifier(Modifier::ITALIC),
            4 => style.add_modifier(Modifier::UNDERLINED),
            7 => style.add_modifier(Modifier::REVERSED),
            9 => style.add_modifier(Modifier::CROSSED_OUT),
            22 => style.remove_modifier(Modifier::BOLD | Modifier::DIM),
            23 => style.remove_modifier(Modifier::ITALIC),
            24 => style.remove_modifier(Modifier::UNDERLINED),
            27 => style.remove_modifier(Modifier::REVERSED),
            29 => style.remove_modifier(Modifier::CROSSED_OUT),
            30..=37 => style.fg(indexed(p - 30)),
            39 => Style {
                fg: base.fg,
                ..style
            },
            40..=47 => style.bg(indexed(p - 40)),
            49 => Style {
                bg: base.bg,
                ..style
            },
            90..=97 => style.fg(indexed(p - 90 + 8)),
            100..=107 => style.bg(indexed(p - 100 + 8)),
            38 | 48 => {
                let c = match ps.next() {
                    Some(5) => ps.next().map(|n| Color::Indexed(n.min(255) as u8)),
                    Some(2) => match (ps.next(), ps.next(), ps.next()) {
                        (Some(r), Some(g), Some(b)) => Some(Color::Rgb(
                            r.min(255) as u8,
                            g.min(255) as u8,
                            b.min(255) as u8,
                        )),
                        _ => None,
                    },
                    _ => None,
                };
                match c {
                    Some(c) if p == 38 => style.fg(c),
                    Some(c) => style.bg(c),
                    None => style,
                }
            }
            _ => style,
        };
    }
    style
}

/// The 16 basic colours by number.
fn indexed(n: u16) -> Color {
    match n {
        0 => Color::Black,
        1 => Color::Red,
        2 => Color::Green,
        3 => Color::Yellow,
        4 => Color::Blue,
        5 => Color::Magenta,
        6 => Color::Cyan,
        7 => Color::Gray,
        8 => Color::DarkGray,
        9 => Color::LightRed,
        10 => Color::LightGreen,
        11 => Color::LightYellow,
        12 => Color::LightBlue,
        13 => Color::LightMagenta,
        14 => Color::LightCyan,
        _ => Color::White,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_styles_and_resets_end_them() {
        let runs = parse("a\x1b[1;31mred\x1b[0m b", Style::default(), true);
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].0, "a");
        assert_eq!(runs[1].0, "red");
        assert_eq!(runs[1].1.fg, Some(Color::Red));
        assert!(runs[1].1.add_modifier.contains(Modifier::BOLD));
        assert_eq!(runs[2], (" b".to_owned(), Style::default()));
        let runs = parse("\x1b[38;5;208mx\x1b[48;2;1;2;3my", Style::default(), true);
        assert_eq!(runs[0].1.fg, Some(Color::Indexed(208)));
        assert_eq!(runs[1].1.bg, Some(Color::Rgb(1, 2, 3)));
    }

    #[test]
    fn other_sequences_and_controls_never_reach_the_screen() {
        let s = strip("\x1b[2K\x1b[1Gdone\x07 \x1b]0;title\x07ok\x1b(B\x00");
        assert_eq!(s, "done ok");
        assert_eq!(strip("50%\r100%"), "100%");
        assert_eq!(strip("a\tb"), "a       b");
        // A sequence cut short at the end of the line is dropped, not printed.
        assert_eq!(strip("x\x1b[3"), "x");
        assert_eq!(strip("x\x1b"), "x");
    }

    #[test]
    fn without_colour_only_the_text_is_kept() {
        let runs = parse("\x1b[31mred\x1b[0m", Style::default(), false);
        assert_eq!(runs, vec![("red".to_owned(), Style::default())]);
    }
}
