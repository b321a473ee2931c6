//! What keys and the mouse do to the TUI's state: selection, scrolling, instances,
//! search and the filter. Pure: keys in, commands out.

use super::{
    App, Cmd, FilterView, Focus, KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind,
    Prompt,
};
use crate::protocol::State;

impl App {
    /// A key: what it changes, and the commands it leads to.
    pub fn key(&mut self, k: KeyEvent) -> Vec<Cmd> {
        if k.kind != ratatui::crossterm::event::KeyEventKind::Press {
            return Vec::new();
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c')) {
            self.quit = true;
            return Vec::new();
        }
        if let Some(p) = &mut self.prompt {
            match k.code {
                KeyCode::Enter => {
                    let Prompt { text, filter } = std::mem::take(p);
                    self.prompt = None;
                    if filter && !text.is_empty() && self.out.filter.is_none() {
                        self.out.filter = Some(FilterView::default());
                    }
                    return self.start_search(text);
                }
                KeyCode::Esc => self.prompt = None,
                KeyCode::Backspace if p.text.pop().is_none() => self.prompt = None,
                KeyCode::Char(c) if !ctrl => p.text.push(c),
                _ => {}
            }
            return Vec::new();
        }
        if let Some(name) = self.confirm.take() {
            if matches!(k.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                self.busy = Some(format!("stopping {name}"));
                return vec![Cmd::Stop(name)];
            }
            self.say(format!("{name} keeps running"), false);
            return Vec::new();
        }
        if self.help {
            self.help = false;
            return Vec::new();
        }
        let page = self.height.saturating_sub(1).max(1);
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc => {
                if self.out.filter.is_some() {
                    return self.leave_filter();
                } else if self.out.search.is_some() {
                    self.out.search = None;
                } else if self.focus == Focus::Output {
                    self.focus = Focus::List;
                } else {
                    self.quit = true;
                }
            }
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Focus::List => Focus::Output,
                    Focus::Output => Focus::List,
                }
            }
            KeyCode::Enter => self.focus = Focus::Output,
            KeyCode::Up | KeyCode::Char('k') => return self.up_down(-1),
            KeyCode::Down | KeyCode::Char('j') => return self.up_down(1),
            KeyCode::PageUp => self.scroll(-(page as i64)),
            KeyCode::PageDown => self.scroll(page as i64),
            KeyCode::Char('u') if ctrl => self.scroll(-(page as i64) / 2),
            KeyCode::Char('d') if ctrl => self.scroll(page as i64 / 2),
            KeyCode::Home | KeyCode::Char('g') => self.jump_top(),
            KeyCode::End | KeyCode::Char('G') => self.jump_bottom(),
            KeyCode::Char('f') if self.out.filter.is_some() => self.pause_filter(),
            KeyCode::Char('f') => {
                if self.out.follow {
                    let (from, _) = self.out.visible(self.height);
                    self.out.top = from;
                    self.out.follow = false;
                } else {
                    self.out.follow = true;
                }
            }
            KeyCode::Char('t') => self.timestamps = !self.timestamps,
            KeyCode::Char('c') => {
                self.out.cleared = self.out.end;
                self.out.follow = true;
                return self.leave_filter();
            }
            KeyCode::Char('r') => return self.action('r'),
            KeyCode::Char('s') => return self.action('s'),
            KeyCode::Char('/') => self.prompt = Some(Prompt::default()),
            KeyCode::Char('n') => return self.find_next(true),
            KeyCode::Char('N') => return self.find_next(false),
            KeyCode::Char('&') => return self.toggle_filter(),
            KeyCode::Char('[') => return self.step_instance(-1),
            KeyCode::Char(']') => return self.step_instance(1),
            KeyCode::Char('b') => return self.toggle_builds(),
            _ => {}
        }
        Vec::new()
    }

    /// A mouse event: the wheel scrolls the output.
    pub fn mouse(&mut self, m: MouseEvent) -> Vec<Cmd> {
        match m.kind {
            MouseEventKind::ScrollUp => self.scroll(-3),
            MouseEventKind::ScrollDown => self.scroll(3),
            _ => {}
        }
        Vec::new()
    }

    pub(super) fn up_down(&mut self, d: i64) -> Vec<Cmd> {
        if self.focus == Focus::Output {
            self.scroll(d);
            return Vec::new();
        }
        let n = self.processes().len();
        if n == 0 {
            return Vec::new();
        }
        let cur = self.current().map_or(0, |(i, _)| i) as i64;
        let next = (cur + d).clamp(0, n as i64 - 1) as usize;
        if self.selected.is_some() && next as i64 == cur {
            return Vec::new();
        }
        self.select(next)
    }

    /// Scroll the output by `d` lines (up when negative); scrolling up leaves follow.
    pub fn scroll(&mut self, d: i64) {
        let h = self.height;
        if let Some(f) = &mut self.out.filter {
            let n = f.lines.len();
            let bottom = n.saturating_sub(h);
            let top = f.top.unwrap_or(bottom) as i64 + d;
            let top = top.clamp(0, bottom as i64) as usize;
            f.top = if top >= bottom { None } else { Some(top) };
            return;
        }
        let (from, _) = self.out.visible(h);
        if d < 0 {
            self.out.follow = false;
            self.out.top = from.saturating_sub(d.unsigned_abs());
        } else {
            let top = from + d as u64;
            let bottom = self.out.end.saturating_sub(h as u64);
            if top >= bottom {
                self.out.follow = true;
            } else {
                self.out.top = top;
            }
        }
    }

    pub(super) fn jump_top(&mut self) {
        if let Some(f) = &mut self.out.filter {
            f.top = Some(0);
            return;
        }
        self.out.follow = false;
        self.out.top = 0;
    }

    pub(super) fn jump_bottom(&mut self) {
        if let Some(f) = &mut self.out.filter {
            f.top = None;
            return;
        }
        self.out.follow = true;
    }

    /// `r` restart, `s` stop (after a `y`) or start.
    pub(super) fn action(&mut self, key: char) -> Vec<Cmd> {
        let Some((_, p)) = self.current() else {
            return Vec::new();
        };
        let name = p.status.name.clone();
        let running = p.status.state.is_running()
            || matches!(
                p.status.state,
                State::Backoff { .. } | State::Building | State::Exiting
            );
        if !self.conn.online() {
            self.say(
                "no daemon is connected: the store is read-only here; start one with `bpm serve`",
                true,
            );
            return Vec::new();
        }
        if self.busy.is_some() {
            self.say("wait for the action under way to finish", true);
            return Vec::new();
        }
        match key {
            'r' => {
                self.busy = Some(format!("restarting {name}"));
                vec![Cmd::Restart(name)]
            }
            _ if running => {
                self.confirm = Some(name);
                Vec::new()
            }
            _ => {
                self.busy = Some(format!("starting {name}"));
                vec![Cmd::Start(name)]
            }
        }
    }
}
