package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Load reads the config file at path, applies the environment overrides
// found by os.LookupEnv and validates the result. A file that cannot be
// read gives an error wrapping the os error (errors.Is(err,
// fs.ErrNotExist) works); a file that cannot be used gives Errors.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("config: cannot read %s: %w", path, err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse decodes data, the contents of file, into a Config: the defaults,
// overridden by the file, overridden by the environment variables that
// lookupEnv finds (nil: none), then validated. file only names the source
// in problems and Config.File. The error, if any, is Errors listing every
// problem.
func Parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	d := newDecoder(file)
	root := d.document(data)
	if root == nil {
		return nil, Errors(d.problems)
	}
	c := Default()
	c.File = file
	d.decode("", root, reflect.ValueOf(c).Elem())
	d.applyEnv(c, lookupEnv)
	d.resolve(c)
	d.validate(c)
	if len(d.problems) > 0 {
		sortProblems(d.problems, file)
		return nil, Errors(d.problems)
	}
	return c, nil
}

// document parses data as one YAML document and returns its root node, or
// nil after recording why it cannot.
func (d *decoder) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := safeDecode(dec, &doc); {
	case err == io.EOF:
		d.problemAt("", nil, "the file is empty; a config needs at least a brokers: list")
		return nil
	case err != nil:
		d.syntaxError(err)
		return nil
	}
	var extra yaml.Node
	switch err := safeDecode(dec, &extra); {
	case err == nil:
		d.problemAt("", &extra, "holds a second YAML document (after ---); a config is one document")
		return nil
	case err != io.EOF:
		d.syntaxError(err)
		return nil
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		d.problemAt("", nil, "the file is empty; a config needs at least a brokers: list")
		return nil
	}
	return doc.Content[0]
}

// safeDecode turns a panic in the YAML parser into an error: bad input must
// never take a process down.
func safeDecode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: cannot parse: %v", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError records a YAML parser error, with its line when it has one.
func (d *decoder) syntaxError(err error) {
	msg := err.Error()
	p := Problem{File: d.file, Msg: msg}
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Msg = m[2]
	} else if len(msg) > 6 && msg[:6] == "yaml: " {
		p.Msg = msg[6:]
	}
	p.Msg = "invalid YAML: " + p.Msg
	d.problems = append(d.problems, p)
}
