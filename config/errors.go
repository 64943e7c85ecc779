package config

import (
	"sort"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a config.
type Problem struct {
	// File is the config file, or "$NAME" when the value came from the
	// environment variable NAME.
	File string
	// Line and Column locate the value (1-based). A problem with a field
	// that the file leaves out points at the field's parent; Line is 0 when
	// there is no such place (the file is empty, a top-level section is
	// missing, or the value came from the environment). Column is 0 when
	// unknown.
	Line, Column int
	// Field is the path of the field, such as "frontend.routes[2].timeout";
	// "" for problems with the file as a whole.
	Field string
	// Msg says what is wrong, such as `must be positive, got "-1s"`.
	Msg string
}

// String formats p as "file:line:col: field: msg", leaving out the parts
// that are unknown.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteString(":" + strconv.Itoa(p.Line))
		if p.Column > 0 {
			b.WriteString(":" + strconv.Itoa(p.Column))
		}
	}
	b.WriteString(": ")
	if p.Field != "" {
		b.WriteString(p.Field + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error makes a Problem usable as an error on its own.
func (p Problem) Error() string { return p.String() }

// Errors is every problem found in a config, in file order. Parse and Load
// return it as their error when the file cannot be used; take it apart
// with errors.As.
type Errors []Problem

// Error prints one problem per line.
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, p := range e {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// sortProblems orders problems as they appear in the file; those from the
// environment go last, in the order of the variables' table.
func sortProblems(ps []Problem, file string) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if ae, be := a.File != file, b.File != file; ae != be {
			return be
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}
