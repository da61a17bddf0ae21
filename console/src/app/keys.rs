//! What each key does: switching views and panes, moving the selection, scrolling, sorting,
//! the filter line, pausing the event tail, help and quitting; the action keys and the open
//! dialog are handed to `actions`.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{actions, App, Effect, Pane, View};

/// Rows moved by PageUp / PageDown.
const PAGE: isize = 10;

pub fn on_key(app: &mut App, key: KeyEvent) -> Option<Effect> {
    // Some terminals also report releases and repeats; act on presses only.
    if key.kind != KeyEventKind::Press {
        return None;
    }
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Some(Effect::Quit);
    }
    if app.dialog.is_some() {
        // `q` too: typed into a dialog it must not quit by surprise.
        return actions::on_dialog_key(app, key.code);
    }
    if app.editing_filter {
        edit_filter(app, key.code);
        return None;
    }
    if app.show_help && key.code != KeyCode::Char('q') {
        // Any key closes the help; it never acts behind the overlay.
        app.show_help = false;
        return None;
    }
    if actions::on_action_key(app, key.code) {
        return None;
    }
    match key.code {
        KeyCode::Char('q') => return Some(Effect::Quit),
        KeyCode::Char('?') => app.show_help = true,
        KeyCode::Char('1') => switch_view(app, View::Overview),
        KeyCode::Char('2') => switch_view(app, View::Store),
        KeyCode::Char('3') => switch_view(app, View::Sessions),
        KeyCode::Char('4') => switch_view(app, View::Events),
        KeyCode::Char('5') => switch_view(app, View::Alerts),
        KeyCode::Down | KeyCode::Char('j') => move_cursor(app, 1),
        KeyCode::Up | KeyCode::Char('k') => move_cursor(app, -1),
        KeyCode::PageDown => move_cursor(app, PAGE),
        KeyCode::PageUp => move_cursor(app, -PAGE),
        KeyCode::Home | KeyCode::Char('g') => move_cursor(app, isize::MIN),
        KeyCode::End | KeyCode::Char('G') => move_cursor(app, isize::MAX),
        KeyCode::Left | KeyCode::Char('h') | KeyCode::Char('[') => cycle_store(app, false),
        KeyCode::Right | KeyCode::Char('l') | KeyCode::Char(']') => cycle_store(app, true),
        KeyCode::Tab | KeyCode::BackTab => toggle_pane(app),
        KeyCode::Enter => enter(app),
        KeyCode::Esc => back(app),
        KeyCode::Char('s') if app.view == View::Store => {
            app.sort = app.sort.next();
        }
        KeyCode::Char('/') if app.view.has_filter() => app.editing_filter = true,
        KeyCode::Char('p') => {
            app.paused_at = match app.paused_at {
                Some(_) => None,
                None => Some(app.next_event_seq),
            };
        }
        _ => {}
    }
    None
}

fn edit_filter(app: &mut App, code: KeyCode) {
    let text = &mut app.filters[app.view.index()];
    match code {
        KeyCode::Char(typed) => text.push(typed),
        KeyCode::Backspace => {
            text.pop();
        }
        KeyCode::Enter => app.editing_filter = false,
        KeyCode::Esc => {
            text.clear();
            app.editing_filter = false;
        }
        _ => {}
    }
    // The rows changed under the cursor: start from the top.
    app.scroll = 0;
}

pub fn switch_view(app: &mut App, view: View) {
    app.view = view;
    app.pane = Pane::Main;
    app.scroll = 0;
    if view == View::Overview && app.selected_store.is_none() {
        app.selected_store = app.stores.keys().next().cloned();
    }
    if view == View::Store && app.selected_index().is_none() {
        app.selected = app
            .store_rows()
            .first()
            .map(|(device, _)| (*device).clone());
    }
}

fn enter(app: &mut App) {
    match app.view {
        View::Overview => {
            if let Some(store) = app.selected_store.clone() {
                app.store = Some(store);
                app.selected = None;
                switch_view(app, View::Store);
            }
        }
        View::Store if app.selected_index().is_some() => switch_view(app, View::Device),
        _ => {}
    }
}

fn back(app: &mut App) {
    let filter = &mut app.filters[app.view.index()];
    if !filter.is_empty() {
        filter.clear();
        app.scroll = 0;
        return;
    }
    match app.view {
        View::Device => switch_view(app, View::Store),
        View::Store => switch_view(app, View::Overview),
        _ => {}
    }
}

fn toggle_pane(app: &mut App) {
    if matches!(app.view, View::Store | View::Device) {
        app.pane = match app.pane {
            Pane::Main => Pane::Side,
            Pane::Side => Pane::Main,
        };
        app.scroll = 0;
    }
}

/// Moves the selection (overview, store view) or scrolls (everything else).
fn move_cursor(app: &mut App, step: isize) {
    match (app.view, app.pane) {
        (View::Overview, _) => {
            let stores: Vec<_> = app.stores.keys().cloned().collect();
            let current = app
                .selected_store
                .as_ref()
                .and_then(|selected| stores.iter().position(|store| store == selected));
            app.selected_store = step_within(current, step, stores.len())
                .and_then(|index| stores.get(index).cloned());
        }
        (View::Store, Pane::Main) => {
            let rows: Vec<_> = app
                .store_rows()
                .into_iter()
                .map(|(device, _)| device.clone())
                .collect();
            let next = step_within(app.selected_index(), step, rows.len());
            app.selected = next.and_then(|index| rows.get(index).cloned());
        }
        _ => {
            let len = scroll_len(app);
            app.scroll = step_within(Some(app.scroll), step, len).unwrap_or(0);
        }
    }
}

/// The index `step` rows from `current` within `0..len` (the first row when none is current).
fn step_within(current: Option<usize>, step: isize, len: usize) -> Option<usize> {
    let last = len.checked_sub(1)?;
    Some(match current {
        None => 0,
        Some(index) => index.saturating_add_signed(step).min(last),
    })
}

/// How many lines the scrolled list of the current view has.
fn scroll_len(app: &App) -> usize {
    match (app.view, app.pane) {
        (View::Sessions, _) => app.visible_sessions().count(),
        (View::Events, _) => app.visible_events().count(),
        (View::Alerts, _) => app.alerts.len(),
        (View::Store, Pane::Side) => app.current_store().map_or(0, |store| {
            app.events
                .iter()
                .filter(|record| &record.event.store == store)
                .count()
        }),
        (View::Device, pane) => app.selected_device().map_or(0, |(_, _, row)| match pane {
            Pane::Main => row.scans.len(),
            Pane::Side => row.commands.len(),
        }),
        _ => 0,
    }
}

/// `[`/`]` (or ←→) walk the stores in the store and device views.
fn cycle_store(app: &mut App, forward: bool) {
    if !matches!(app.view, View::Store | View::Device) {
        return;
    }
    let stores: Vec<_> = app.stores.keys().cloned().collect();
    let Some(last) = stores.len().checked_sub(1) else {
        return;
    };
    let current = app
        .current_store()
        .and_then(|current| stores.iter().position(|store| store == current))
        .unwrap_or(0);
    let next = match forward {
        true if current == last => 0,
        true => current + 1,
        false if current == 0 => last,
        false => current - 1,
    };
    app.store = stores.get(next).cloned();
    app.selected = None;
    switch_view(app, View::Store);
}
