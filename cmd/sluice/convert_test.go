package main

import (
	"reflect"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/configs"
	"github.com/sluicemq/sluice/mqtt"
)

// fillDistinct sets every settable scalar field under v to a distinct non-zero value.
func fillDistinct(v reflect.Value, next *int) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fillDistinct(v.Field(i), next)
			}
		}
	case reflect.String:
		*next++
		v.SetString("s" + string(rune('a'+*next%26)) + time.Duration(*next).String())
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		*next++
		v.SetInt(int64(*next))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		*next++
		v.SetUint(uint64(*next))
	case reflect.Float32, reflect.Float64:
		*next++
		v.SetFloat(float64(*next) + 0.5)
	}
}

// sameFields checks that every field of want (a configs struct) has a field of the same name and value
// in got (the mqtt struct), recursively.
func sameFields(t *testing.T, path string, want, got reflect.Value) {
	t.Helper()
	for i := range want.NumField() {
		f := want.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		g := got.FieldByName(f.Name)
		if !g.IsValid() {
			t.Errorf("%s.%s has no counterpart in mqtt", path, f.Name)
			continue
		}
		w := want.Field(i)
		if w.Kind() == reflect.Struct && w.Type() != reflect.TypeOf(time.Duration(0)) {
			sameFields(t, path+"."+f.Name, w, g)
			continue
		}
		if w.Interface() != g.Interface() {
			t.Errorf("%s.%s = %v in the config, %v in mqtt.Options", path, f.Name, w.Interface(), g.Interface())
		}
	}
}

// TestMQTTOptions: every broker setting of the configuration reaches mqtt.Options, and every field of
// mqtt.Limits, Listener and TLS is configurable.
func TestMQTTOptions(t *testing.T) {
	cfg, err := configs.Default()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	fillDistinct(reflect.ValueOf(&cfg.MQTT.Limits).Elem(), &n)
	fillDistinct(reflect.ValueOf(&cfg.MQTT.SlowSubscribers).Elem(), &n)
	cfg.MQTT.EchoUserProperties, cfg.MQTT.StorageSync, cfg.MQTT.SysInterval = true, true, 7*time.Second
	cfg.MQTT.Listeners = []configs.Listener{{}}
	fillDistinct(reflect.ValueOf(&cfg.MQTT.Listeners[0]).Elem(), &n)
	cfg.MQTT.Users = []configs.User{{Username: "u", PasswordHash: "h"}}
	cfg.MQTT.ACL = []configs.ACLRule{{Username: "u", ClientID: "c", Publish: []string{"p/#"}, Subscribe: []string{"s/+"}}}
	cfg.DataDir = "/d"

	o := mqttOptions(cfg, zerolog.Nop(), nil)
	sameFields(t, "mqtt.limits", reflect.ValueOf(cfg.MQTT.Limits), reflect.ValueOf(o.Limits))
	sameFields(t, "mqtt.slow_subscribers", reflect.ValueOf(cfg.MQTT.SlowSubscribers), reflect.ValueOf(o.Slow))
	sameFields(t, "mqtt.listeners[0]", reflect.ValueOf(cfg.MQTT.Listeners[0]), reflect.ValueOf(o.Listeners[0]))
	sameFields(t, "mqtt.users[0]", reflect.ValueOf(cfg.MQTT.Users[0]), reflect.ValueOf(o.Users[0]))
	if !reflect.DeepEqual(o.ACL, []mqtt.ACLRule{{Username: "u", ClientID: "c", Publish: []string{"p/#"}, Subscribe: []string{"s/+"}}}) {
		t.Errorf("ACL = %+v", o.ACL)
	}
	if !o.EchoUserProperties || !o.StorageSync || o.SysInterval != 7*time.Second || o.StorageDir != "/d/mqtt" {
		t.Errorf("options = %+v", o)
	}
	// The other way round: nothing the broker offers is missing from the configuration.
	for _, pair := range []struct{ cfg, mqtt any }{
		{configs.Limits{}, mqtt.Limits{}}, {configs.Listener{}, mqtt.Listener{}}, {configs.TLS{}, mqtt.TLS{}},
		{configs.SlowSubscribers{}, mqtt.SlowSubscribers{}},
	} {
		ct, mt := reflect.TypeOf(pair.cfg), reflect.TypeOf(pair.mqtt)
		for i := range mt.NumField() {
			if _, ok := ct.FieldByName(mt.Field(i).Name); !ok {
				t.Errorf("mqtt.%s.%s is not configurable", mt.Name(), mt.Field(i).Name)
			}
		}
	}
}
